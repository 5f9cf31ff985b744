# LinuxKit's user-data tree: {"NAME": {"entries": {...}} | {"content": "...", "perm": "0644"}}
# -> lines "d|f <TAB> perm <TAB> path <TAB> base64(content)". Names with "/" or that are
# "." / ".." are dropped.
def expand($prefix):
  to_entries[]
  | select(.key | (test("/") or . == "." or . == ".." or . == "") | not)
  | .key as $name | .value as $value
  | if ($value | type) != "object" then empty
    elif ($value | has("entries")) then
      ["d", ($value.perm // "0755"), ($prefix + "/" + $name), ""],
      ($value.entries | if type == "object" then expand($prefix + "/" + $name) else empty end)
    else
      ["f", ($value.perm // "0644"), ($prefix + "/" + $name), (($value.content // "") | tostring | @base64)]
    end;
expand("") | @tsv
