# LinuxKit's user-data tree, in busybox awk (no jq: its libraries cost 1.5 MB of initrd):
#   {"NAME": {"entries": {...}, "perm": "0755"} | {"content": "...", "perm": "0644"}}
# For each directory prints "d<TAB>perm<TAB>path"; for each file writes its content to
# WORK/N (N counts from 1) and prints "f<TAB>perm<TAB>path<TAB>N". Names with "/", a tab, a
# newline, or that are "", "." or ".." are dropped (with what is under them). Strings are
# decoded (\n, \t, \", \\, \/, \b, \f, \r, \uXXXX with surrogate pairs, as UTF-8); a
# content that is not a string is written as its JSON text (false and null: empty, as jq's
# `//`). Input that is not a JSON object prints nothing and exits 1.
#   awk -v WORK=/tmp/metadata -f expand.awk user-data
# With -v FIELDS=DIR it reads provision serve's metadata object instead and, when all of it is
# JSON, writes DIR/user-data (userData: a string as it is, an object as its JSON text),
# DIR/meta-data ("local-hostname: NAME"), DIR/instance-key (sshKeys: the strings, one a
# line; a key holding a line break is dropped) and DIR/image; other members are skipped.
BEGIN { RS = "\001"; hexdigits = "0123456789abcdef" }
function ws() { while (pos <= n && index(" \t\n\r", substr(s, pos, 1)) > 0) pos++ }
function fail() { bad = 1; pos = n + 1 }
function utf8(c) {
	if (c < 128) return sprintf("%c", c)
	if (c < 2048) return sprintf("%c%c", 192 + int(c / 64), 128 + c % 64)
	if (c < 65536) return sprintf("%c%c%c", 224 + int(c / 4096), 128 + int(c / 64) % 64, 128 + c % 64)
	return sprintf("%c%c%c%c", 240 + int(c / 262144), 128 + int(c / 4096) % 64, 128 + int(c / 64) % 64, 128 + c % 64)
}
function hex4(at,   i, v, d) {
	v = 0
	for (i = 0; i < 4; i++) {
		d = index(hexdigits, tolower(substr(s, at + i, 1)))
		if (d == 0) { fail(); return 0 }
		v = v * 16 + d - 1
	}
	return v
}
# a string at pos (on its opening quote): its decoded value
function str(   out, c, e, u, lo) {
	out = ""
	pos++
	while (pos <= n) {
		c = substr(s, pos, 1)
		if (c == "\"") { pos++; return out }
		if (c != "\\") { out = out c; pos++; continue }
		e = substr(s, pos + 1, 1)
		pos += 2
		if (e == "n") out = out "\n"
		else if (e == "t") out = out "\t"
		else if (e == "r") out = out "\r"
		else if (e == "b") out = out "\b"
		else if (e == "f") out = out "\f"
		else if (e == "u") {
			u = hex4(pos)
			pos += 4
			if (u >= 55296 && u < 56320 && substr(s, pos, 2) == "\\u") {
				lo = hex4(pos + 2)
				if (lo >= 56320 && lo < 57344) { u = 65536 + (u - 55296) * 1024 + (lo - 56320); pos += 6 }
			}
			if (u > 0) out = out utf8(u)
		}
		else out = out e
	}
	fail()
	return out
}
# any value at pos, skipped or read: sets T (s string, o object, a array, l literal) and
# V (a string's value or a literal's text)
function skip(   depth, c, start) {
	ws()
	c = substr(s, pos, 1)
	if (c == "\"") { V = str(); T = "s"; return }
	if (c == "{" || c == "[") {
		T = c == "{" ? "o" : "a"
		depth = 0
		start = pos
		while (pos <= n) {
			c = substr(s, pos, 1)
			if (c == "\"") { str(); continue }
			if (c == "{" || c == "[") depth++
			else if (c == "}" || c == "]") { depth--; if (depth == 0) { pos++; V = substr(s, start, pos - start); return } }
			pos++
		}
		fail()
		return
	}
	start = pos
	while (pos <= n && index(",}] \t\n\r", substr(s, pos, 1)) == 0) pos++
	if (pos == start) fail()
	V = substr(s, start, pos - start)
	T = "l"
}
# an object's next member at pos (inside the braces): 1 with its decoded name in KEY and pos
# on its value; 0 at the closing brace (passed) or on bad JSON
function member() {
	ws()
	if (substr(s, pos, 1) == "}") { pos++; return 0 }
	if (substr(s, pos, 1) != "\"") { fail(); return 0 }
	KEY = str()
	ws()
	if (substr(s, pos, 1) != ":") { fail(); return 0 }
	pos++
	ws()
	return 1
}
# after a member's value: 1 past its comma or before the closing brace, 0 on bad JSON
function member_end() {
	ws()
	if (substr(s, pos, 1) == ",") { pos++; return 1 }
	if (substr(s, pos, 1) == "}") return 1
	fail()
	return 0
}
function good(name) {
	return name != "" && name != "." && name != ".." && index(name, "/") == 0 && index(name, "\t") == 0 && index(name, "\n") == 0
}
# an object of entries at pos: each member whose value is an object is a node
function entries(prefix, keep,   name, ok) {
	ws()
	if (substr(s, pos, 1) != "{") { skip(); return }
	pos++
	while (member()) {
		name = KEY
		ok = keep && good(name)
		if (substr(s, pos, 1) == "{") node(prefix "/" name, ok)
		else skip()
		if (!member_end()) return
	}
}
# a node object at pos: a directory (it has "entries") or a file
function node(path, keep,   key, perm, content, dir) {
	pos++
	perm = ""
	content = ""
	dir = 0
	while (member()) {
		key = KEY
		if (key == "entries") {
			dir = 1
			if (substr(s, pos, 1) == "{") entries(path, keep)
			else skip()
		} else {
			skip()
			if (key == "perm") perm = V
			else if (key == "content") content = (T == "l" && (V == "false" || V == "null")) ? "" : V
		}
		if (!member_end()) return
	}
	if (!keep || bad) return
	if (dir) { printf "d\t%s\t%s\n", perm == "" ? "0755" : perm, path; return }
	files++
	printf "%s", content >(WORK "/" files)
	close(WORK "/" files)
	printf "f\t%s\t%s\t%d\n", perm == "" ? "0644" : perm, path, files
}
function oneline(v) { return v != "" && index(v, "\n") == 0 && index(v, "\r") == 0 }
# sshKeys' array at pos: its one-line strings, each ending in a newline
function keylist(   out) {
	out = ""
	pos++
	for (;;) {
		ws()
		if (substr(s, pos, 1) == "]") { pos++; return out }
		skip()
		if (T == "s" && oneline(V)) out = out V "\n"
		ws()
		if (substr(s, pos, 1) == ",") pos++
		else if (substr(s, pos, 1) != "]") { fail(); return "" }
	}
}
function put(name, text) {
	printf "%s", text >(FIELDS "/" name)
	close(FIELDS "/" name)
}
# provision serve's metadata object at pos (see the header)
function fields(   name, have, userdata, host, keys, image) {
	pos++
	while (member()) {
		name = KEY
		if (name == "sshKeys" && substr(s, pos, 1) == "[") { keys = keylist(); have["keys"] = 1 }
		else {
			skip()
			if (name == "userData" && (T == "s" || T == "o")) { userdata = V; have["userdata"] = 1 }
			else if (name == "hostname" && T == "s" && oneline(V)) { host = V; have["host"] = 1 }
			else if (name == "image" && T == "s" && oneline(V)) { image = V; have["image"] = 1 }
		}
		if (!member_end()) return
	}
	ws()
	if (bad || pos <= n) return
	if ("userdata" in have) put("user-data", userdata)
	if ("host" in have) put("meta-data", "local-hostname: " host "\n")
	if ("keys" in have && keys != "") put("instance-key", keys)
	if ("image" in have) put("image", image "\n")
}
{
	s = $0
	n = length(s)
	pos = 1
	ws()
	if (substr(s, pos, 1) != "{") exit 1
	if (FIELDS != "") {
		fields()
		if (bad || pos <= n) exit 1
		exit 0
	}
	entries("", 1)
	ws()
	if (bad || pos <= n) exit 1
}
