#!/bin/sh
# The machine's status as JSON (see pkg/agent/build.yml for the shape).
# Shell builtins wherever they do (each fork and exec costs ~10 ms under emulation, and
# the boot is ready when this first answers): one od for every service's runsv status,
# `read` for the text files. AGENT_SERVICES and AGENT_IMAGE_JSON move the inputs (tests).
TAI_UNIX_OFFSET=4611686018427387914
SERVICES=${AGENT_SERVICES:-/run/service}
IMAGE_JSON=${AGENT_IMAGE_JSON:-/host/etc/provision/image.json}

# print $1 as a JSON string (sed only for a backslash or a quote)
json_string() {
	case $1 in
	*[\"\\]*) printf '"%s"' "$(printf '%s' "$1" | sed 's/\\/\\\\/g; s/"/\\"/g')" ;;
	*) printf '"%s"' "$1" ;;
	esac
}

# the image's digest: "digest": "..." in image.json (read, no sed: the boot is ready when
# this first answers)
digest=""
if [ -r "$IMAGE_JSON" ]; then
	while IFS= read -r line || [ -n "$line" ]; do
		case $line in *'"digest"'*) ;; *) continue ;; esac
		line=${line##*'"digest"'}
		line=${line#"${line%%[!	 ]*}"}
		case $line in :*) line=${line#:} ;; *) continue ;; esac
		line=${line#"${line%%[!	 ]*}"}
		case $line in '"'*'"'*) line=${line#'"'}; digest=${line%%'"'*}; break ;; esac
	done <"$IMAGE_JSON"
fi
read -r up _ </proc/uptime
read -r host </proc/sys/kernel/hostname
now=$(date +%s)

# the services (a directory with ./run), "1" where runsv has written its status yet
services=""
statuses=""
for dir in "$SERVICES"/*/; do
	[ -f "${dir}run" ] || continue
	if [ -r "${dir}supervise/status" ]; then
		services="$services ${dir%/}:1"
		statuses="$statuses ${dir}supervise/status"
	else
		services="$services ${dir%/}:0"
	fi
done
# runsv's 20-byte status, one line each: TAI64N of the last change (12), pid (4, little
# endian), paused, want (u/d), got TERM, state (0 down, 1 run, 2 finish)
records=""
[ -n "$statuses" ] && records=$(od -An -tu1 -w20 -v $statuses)

printf 'Content-Type: application/json\r\nCache-Control: no-store\r\n\r\n'
printf '{"digest": '
json_string "$digest"
printf ', "hostname": '
json_string "$host"
printf ', "uptime": %s, "services": {' "$up"
sep=""
for entry in $services; do
	dir=${entry%:*}
	name=${dir##*/}
	starts=0
	[ -r "$dir/starts" ] && read -r starts <"$dir/starts"
	[ -n "$starts" ] || starts=0
	restarts=$((starts > 0 ? starts - 1 : 0))
	state=starting
	since=0
	pid=0
	stat=""
	[ -r "$dir/supervise/stat" ] && read -r stat <"$dir/supervise/stat"
	if [ "${entry##*:}" = 1 ]; then
		record=${records%%
*}
		records=${records#"$record"}
		records=${records#
}
		set -- $record
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
	printf '%s' "$sep"
	json_string "$name"
	printf ': {"state": "%s", "restarts": %d, "uptime": %d, "pid": %d}' "$state" "$restarts" "$uptime" "$pid"
	sep=", "
done
printf '}}\n'
