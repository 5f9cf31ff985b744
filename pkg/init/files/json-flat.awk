# JSON -> one "path<TAB>value" line per scalar (busybox awk): {"mounts": [{"options":
# ["rw"]}]} gives "mounts.0.options.0<TAB>rw". Empty arrays and objects give nothing.
# Enough for runtime.json (strings, booleans, numbers; escapes kept as the escaped char).
function path(   k, p) {
	p = ""
	for (k = 1; k <= depth; k++) p = p (k > 1 ? "." : "") key[k]
	return p
}
BEGIN { RS = "\001" }
{
	s = $0; n = length(s); i = 1; depth = 0
	while (i <= n) {
		c = substr(s, i, 1)
		if (c == "{") { depth++; kind[depth] = "o"; key[depth] = ""; want[depth] = 1; i++ }
		else if (c == "[") { depth++; kind[depth] = "a"; key[depth] = 0; i++ }
		else if (c == "}" || c == "]") { depth--; i++ }
		else if (c == ",") { if (kind[depth] == "a") key[depth]++; else want[depth] = 1; i++ }
		else if (c == ":") { want[depth] = 0; i++ }
		else if (c == "\"") {
			j = i + 1; v = ""
			while (j <= n) {
				d = substr(s, j, 1)
				if (d == "\\") { v = v substr(s, j + 1, 1); j += 2; continue }
				if (d == "\"") break
				v = v d; j++
			}
			i = j + 1
			if (kind[depth] == "o" && want[depth]) key[depth] = v
			else print path() "\t" v
		}
		else if (c == " " || c == "\t" || c == "\n" || c == "\r") i++
		else {
			j = i
			while (j <= n && index(",}] \t\n\r", substr(s, j, 1)) == 0) j++
			print path() "\t" substr(s, i, j - i); i = j
		}
	}
}
