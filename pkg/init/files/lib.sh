# Shared helpers of provision's init scripts (sourced, not executed).
PATH=/usr/sbin:/usr/bin:/sbin:/bin
export PATH
RUNC="runc --root /run/runc"

# "provision-init: [UPTIME] message" on the console
log() {
	read -r _up _ </proc/uptime 2>/dev/null
	echo "provision-init: [${_up:-?}] $*" >/dev/console 2>/dev/null || echo "provision-init: $*"
}

# uptime in whole seconds
uptime_s() { read -r up _ </proc/uptime; echo "${up%%.*}"; }

# container id from a bundle directory: 001-sysctl -> sysctl
container_id() { basename "$1" | sed 's/^[0-9][0-9]*-//'; }

is_mounted() { grep -q " $1 " /proc/mounts; }

# Remove what is left of container $1 (runc costs ~0.4 s per call under emulation:
# call it only when runc has state for it).
forget_container() {
	[ -e "/run/runc/$1" ] && $RUNC delete -f "$1" >/dev/null 2>&1
	return 0
}

# A writable container (lower/ + tmp/) gets an overlay of lower/ and a tmpfs upper
# mounted on rootfs/; read-only containers carry rootfs/ itself.
prepare_rootfs() {
	bundle=${1%/}
	[ -d "$bundle/lower" ] || return 0
	is_mounted "$bundle/rootfs" && return 0
	mkdir -p "$bundle/tmp" "$bundle/rootfs"
	is_mounted "$bundle/tmp" || mount -t tmpfs -o mode=0755 tmpfs "$bundle/tmp"
	mkdir -p "$bundle/tmp/upper" "$bundle/tmp/work"
	if ! mount -t overlay overlay \
		-o "lowerdir=$bundle/lower,upperdir=$bundle/tmp/upper,workdir=$bundle/tmp/work" \
		"$bundle/rootfs" 2>/dev/null; then
		log "no overlayfs for $bundle: copying lower/ into a tmpfs"
		mount -t tmpfs -o mode=0755 tmpfs "$bundle/rootfs"
		cp -a "$bundle/lower/." "$bundle/rootfs/"
	fi
}

# Values of the string array "$2" of the JSON file $1 (runtime.json), one per line.
json_array() {
	{ tr -d '\n' <"$1"; echo; } | sed -n "s/.*\"$2\": *\[\([^]]*\)\].*/\1/p" | tr ',' '\n' |
		sed -n 's/^ *"\(.*\)" *$/\1/p'
}

# LinuxKit's runtime.json beside config.json: "mkdir" and "cgroups" are applied;
# mounts, interfaces and bindNS are not supported by this init (reported, ignored).
apply_runtime() {
	runtime=${1%/}/runtime.json
	[ -f "$runtime" ] || return 0
	# nothing to do unless an array has items or a string is set (one grep: forks are
	# costly under emulation)
	grep -q -e '\[$' -e '": *\["' -e '": *"[^"]' "$runtime" || return 0
	for dir in $(json_array "$runtime" mkdir); do mkdir -p "$dir"; done
	for group in $(json_array "$runtime" cgroups); do mkdir -p "/sys/fs/cgroup/${group#/}"; done
	case "$(tr -d ' \n' <"$runtime")" in
	*'"mounts":[{'* | *'"interfaces":[{'* | *'"bindNS":{'*'":"/'*)
		log "$(basename "$1"): runtime.json mounts / interfaces / bindNS are not supported, ignored" ;;
	esac
}

# Run the containers of containers/onboot or containers/onshutdown one after another.
run_containers_in_order() {
	kind=$1
	for bundle in /containers/"$kind"/*/; do
		[ -f "$bundle/config.json" ] || continue
		bundle=${bundle%/}
		id=$(container_id "$bundle")
		prepare_rootfs "$bundle"
		apply_runtime "$bundle"
		log "$kind $(basename "$bundle"): starting"
		forget_container "$id"
		$RUNC run --bundle "$bundle" "$id" </dev/null
		log "$kind $(basename "$bundle"): exited with status $?"
	done
}

# The persistent data partition of disks built with --data-size: an ext4 file system
# labelled provision-data, mounted at /var/persist (before the onboot containers run).
# Missing partition: nothing to do; a failed mount is logged, never fatal.
mount_persist() {
	dev=$(findfs LABEL=provision-data 2>/dev/null) || return 0
	[ -b "$dev" ] || return 0
	mkdir -p /var/persist
	if mount -t ext4 -o noatime "$dev" /var/persist; then
		log "data partition $dev (provision-data) mounted at /var/persist"
	else
		log "data partition $dev (provision-data): mounting at /var/persist failed"
	fi
}
