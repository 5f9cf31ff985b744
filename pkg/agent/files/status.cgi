#!/bin/sh
# The machine's status as JSON (see pkg/agent/build.yml for the shape).
TAI_UNIX_OFFSET=4611686018427387914
SERVICES=/run/service
IMAGE_JSON=/host/etc/provision/image.json

json_string() { printf '"%s"' "$(printf '%s' "$1" | sed 's/\\/\\\\/g; s/"/\\"/g')"; }

digest=""
[ -r "$IMAGE_JSON" ] && digest=$(sed -n 's/.*"digest"[[:space:]]*:[[:space:]]*"\([^"]*\)".*/\1/p' "$IMAGE_JSON")
read -r up _ </proc/uptime
now=$(date +%s)

printf 'Content-Type: application/json\r\nCache-Control: no-store\r\n\r\n'
printf '{"digest": %s, "hostname": %s, "uptime": %s, "services": {' \
	"$(json_string "$digest")" "$(json_string "$(hostname)")" "$up"
sep=""
for dir in "$SERVICES"/*/; do
	[ -f "$dir/run" ] || continue
	dir=${dir%/}
	name=${dir##*/}
	starts=$(cat "$dir/starts" 2>/dev/null || echo 0)
	restarts=$((starts > 0 ? starts - 1 : 0))
	state=starting
	since=0
	pid=0
	stat=$(cat "$dir/supervise/stat" 2>/dev/null)
	if [ -r "$dir/supervise/status" ]; then
		# runsv's 20-byte status: TAI64N of the last change (12), pid (4, little
		# endian), paused, want (u/d), got TERM, state (0 down, 1 run, 2 finish)
		set -- $(od -An -tu1 -N20 "$dir/supervise/status")
		if [ $# -eq 20 ]; then
			tai=0
			for byte in $1 $2 $3 $4 $5 $6 $7 $8; do tai=$((tai * 256 + byte)); done
			since=$((tai - TAI_UNIX_OFFSET))
			pid=$((${13} + ${14} * 256 + ${15} * 65536 + ${16} * 16777216))
			want=${18}
			case "$stat" in
			run*) state=running ;;
			finish*) state=restarting ;;
			down*) if [ "$want" -eq 117 ]; then state=restarting; else state=exited; fi ;;
			esac
		fi
	fi
	uptime=0
	[ "$state" = running ] && [ "$since" -gt 0 ] && uptime=$((now - since))
	[ "$uptime" -lt 0 ] && uptime=0
	[ "$state" = running ] || pid=0
	printf '%s%s: {"state": "%s", "restarts": %d, "uptime": %d, "pid": %d}' \
		"$sep" "$(json_string "$name")" "$state" "$restarts" "$uptime" "$pid"
	sep=", "
done
printf '}}\n'
