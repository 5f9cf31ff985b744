# Shared helpers of provision's init scripts (sourced, not executed).
PATH=/usr/sbin:/usr/bin:/sbin:/bin
export PATH
RUNC="runc --root /run/runc"

log() { echo "provision-init: $*" >/dev/console 2>/dev/null || echo "provision-init: $*"; }

# uptime in whole seconds
uptime_s() { read -r up _ </proc/uptime; echo "${up%%.*}"; }

# container id from a bundle directory: 001-sysctl -> sysctl
container_id() { basename "$1" | sed 's/^[0-9][0-9]*-//'; }

is_mounted() { grep -q " $1 " /proc/mounts; }

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

# Run the containers of containers/onboot or containers/onshutdown one after another.
run_containers_in_order() {
	kind=$1
	for bundle in /containers/"$kind"/*/; do
		[ -f "$bundle/config.json" ] || continue
		bundle=${bundle%/}
		id=$(container_id "$bundle")
		prepare_rootfs "$bundle"
		log "$kind $(basename "$bundle"): starting"
		$RUNC delete -f "$id" >/dev/null 2>&1
		$RUNC run --bundle "$bundle" "$id" </dev/null
		log "$kind $(basename "$bundle"): exited with status $?"
	done
}
