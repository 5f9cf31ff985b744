"""The journal on etcd: a JSON-gateway client, the journal URL, the Store, and shard ownership."""
