"""The aws target: EC2 instances for clusters (:mod:`.instances`), their schemas
(:mod:`.properties`) and the boto3 clients (:mod:`.session`); images pushed as EBS snapshots
and AMIs (:mod:`.publish`, :mod:`.ebs`, :mod:`.importer`, :mod:`.ami`, :mod:`.clients`)."""
