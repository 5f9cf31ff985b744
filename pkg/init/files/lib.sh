# Shared helpers of provision's init scripts (sourced, not executed).
PATH=/usr/sbin:/usr/bin:/sbin:/bin
export PATH
# the OCI runtime: crun (pkg/init), or runc when provision/runc follows init in the spec
RUNTIME=crun
[ -r /etc/provision-init/runtime ] && read -r RUNTIME </etc/provision-init/runtime
RUNC="${RUNTIME:-crun} --root /run/runc"
BOOT_TIMES=/run/provision/boot-times
IDE_PROBED=/run/provision/ide-probed

# "provision-init: [UPTIME] message" on the console
log() {
	read -r _up _ </proc/uptime 2>/dev/null
	echo "provision-init: [${_up:-?}] $*" >/dev/console 2>/dev/null || echo "provision-init: $*"
}

# mark STEP: log it, and add "UPTIME<TAB>STEP" to $BOOT_TIMES.tsv (builtins only)
mark() {
	read -r _up _ </proc/uptime 2>/dev/null
	echo "provision-init: [${_up:-?}] $*" >/dev/console 2>/dev/null
	echo "${_up:-0}	$*" >>"$BOOT_TIMES.tsv" 2>/dev/null
}

# $BOOT_TIMES.tsv as JSON, {"steps": [{"step": "...", "uptime": 1.23}, ...]} in time
# order, written to a temporary name and renamed; a writer that finds lines added while it
# wrote writes again, so the last one to finish has them all (services write concurrently)
# the kernel's own steps (printk times), read from its log once: the initramfs unpacked,
# which happened before /init ran
kernel_boot_times() {
	[ -s "$BOOT_TIMES.kernel" ] && return 0
	dmesg | sed -n 's/^\[ *\([0-9.]*\)\] Trying to unpack rootfs image.*/\1	kernel: initramfs unpack starts/p
s/^\[ *\([0-9.]*\)\] Freeing initrd memory.*/\1	kernel: initramfs unpacked/p' >"$BOOT_TIMES.kernel.$$" &&
		mv -f "$BOOT_TIMES.kernel.$$" "$BOOT_TIMES.kernel"
	[ -e "$BOOT_TIMES.kernel" ] || : >"$BOOT_TIMES.kernel"
}
write_boot_times() {
	local lines tmp
	tmp=$BOOT_TIMES.json.$$.$RANDOM
	kernel_boot_times
	while :; do
		lines=$(wc -l <"$BOOT_TIMES.tsv")
		sort -n "$BOOT_TIMES.tsv" "$BOOT_TIMES.kernel" 2>/dev/null | awk -F '\t' '
			BEGIN { printf "{\"steps\": [" }
			{ gsub(/["\\]/, "", $2); printf("%s{\"step\": \"%s\", \"uptime\": %s}", (NR > 1 ? ", " : ""), $2, $1) }
			END { print "]}" }' >"$tmp" && mv -f "$tmp" "$BOOT_TIMES.json"
		[ "$(wc -l <"$BOOT_TIMES.tsv")" = "$lines" ] && return 0
	done
}

# "$@" a second from now, in a process of its own at the lowest priority (busybox has no
# nice: the subshell renices itself): bookkeeping the boot does not wait for. Started at
# once at the lowest priority, such work still took ~0.05 s from the boot on one vCPU
# (the renice runs at full priority, and a new process runs before the others): the
# second keeps it out of the busiest part (under TCG the examples' services are up within
# 0.5 s of rcS's end)
later() {
	(
		(
			sleep 1
			read -r self _ </proc/self/stat
			renice -n 19 -p "$self" >/dev/null 2>&1
			"$@"
		) &
	)
}
write_boot_times_later() { later write_boot_times; }

# Has every service started at least once (each ./starts above 0)? The last of them to start
# writes boot-times.json (one writer, not one per service; builtins only)
all_services_started() {
	local file count
	for file in /run/service/*/starts; do
		count=0
		[ -r "$file" ] && read -r count <"$file"
		[ "${count:-0}" -gt 0 ] || return 1
	done
	return 0
}

# Containers given block devices wait until the IDE controllers are probed (rcS probes
# them in the background; at most 20 s)
wait_for_ide() {
	local i
	[ -e "$IDE_PROBED" ] && return 0
	grep -qs '"type": *"b"' "${1%/}/config.json" || return 0
	i=0
	while [ ! -e "$IDE_PROBED" ] && [ "$i" -lt 400 ]; do
		sleep 0.05
		i=$((i + 1))
	done
}

# The runtime's binary on a read-only mount. crun re-executes itself from a sealed copy
# (a memfd) at every call unless its binary is read-only, against CVE-2019-5736 (a
# container writing the host's runtime through /proc/self/exe); it takes any tmpfs file,
# as the initramfs's are, for an unsealed memfd: two more execs, a mount and a copy per
# call (~80 ms of 150 under TCG). A copy on a ramfs remounted read-only, bind-mounted over
# the binary, is what crun accepts as safe; the writable original stays hidden under it.
readonly_runtime() {
	local bin dir
	[ "$RUNTIME" = crun ] || return 0 # runc 1.1 also wants _LIBCONTAINER_CLONED_BINARY in runc init
	bin=""
	for dir in /usr/bin /usr/sbin /bin /sbin; do [ -x "$dir/crun" ] && bin=$dir/crun && break; done
	[ -n "$bin" ] || return 0
	dir=/run/provision/.runtime
	mkdir -p "$dir"
	if mount -t ramfs -o mode=0755 ramfs "$dir"; then
		cp "$bin" "$dir/runtime" && mount -o remount,ro "$dir" &&
			mount --bind "$dir/runtime" "$bin" || log "$bin: no read-only copy (it copies itself at each call)"
		umount -l "$dir"
	fi
	rmdir "$dir" 2>/dev/null
	return 0
}

# uptime in whole seconds
uptime_s() { read -r up _ </proc/uptime; echo "${up%%.*}"; }

# CONTAINER_ID: the container id of a bundle directory, 001-sysctl -> sysctl (builtins:
# a fork and exec costs ~5-10 ms under emulation)
container_id() {
	local digits
	CONTAINER_ID=${1%/}
	CONTAINER_ID=${CONTAINER_ID##*/}
	digits=${CONTAINER_ID%%[!0-9]*}
	[ -n "$digits" ] && CONTAINER_ID=${CONTAINER_ID#"$digits"-}
	return 0
}

# is $1 a mount point? (builtins: a fork and exec costs ~5 ms under emulation)
is_mounted() {
	local _dev _dir _rest
	while read -r _dev _dir _rest; do
		[ "$_dir" = "$1" ] && return 0
	done </proc/mounts
	return 1
}

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

# Does the runtime.json on stdin set anything: an array with items (a line ending in "[",
# or ["...), a string that is not empty, an object with members? What
# `grep -e '\[$' -e '": *\["' -e '": *"[^"]' -e '": *{ *"'` finds, with builtins (a grep
# costs ~8 ms under emulation, at every container start).
runtime_sets_something() {
	local line rest value
	while IFS= read -r line || [ -n "$line" ]; do
		case $line in *\[) return 0 ;; esac
		rest=$line
		while :; do
			case $rest in *'":'*) rest=${rest#*'":'} ;; *) break ;; esac
			value=${rest#"${rest%%[! ]*}"}
			case $value in
			'["'* | '"'[!'"']*) return 0 ;;
			'{'*)
				value=${value#?}
				value=${value#"${value%%[! ]*}"}
				case $value in '"'*) return 0 ;; esac
				;;
			esac
		done
	done
	return 1
}

# LinuxKit's runtime.json beside config.json, flattened once per container start into
# "path<TAB>value" lines ($RT_FLAT; json-flat.awk). Nothing to do when no array has items
# and no string is set (runtime_sets_something first: forks are costly under emulation).
RT_FLAT=""
load_runtime() {
	local runtime
	RT_FLAT=""
	runtime=${1%/}/runtime.json
	[ -f "$runtime" ] || return 0
	runtime_sets_something <"$runtime" || return 0
	RT_FLAT=$(awk -f "${JSON_FLAT:-/usr/libexec/provision/json-flat.awk}" "$runtime")
}

# Values under the key path $1 of $RT_FLAT ("mkdir" lists mkdir.0, mkdir.1, ...).
rt_get() { printf '%s\n' "$RT_FLAT" | awk -F '\t' -v k="$1" '$1 == k { print $2 }'; }
rt_list() { printf '%s\n' "$RT_FLAT" | awk -F '\t' -v k="$1" 'index($1, k ".") == 1 && substr($1, length(k) + 2) ~ /^[0-9]+$/ { print $2 }'; }

# A runtime path: absolute, or relative to the container's rootfs (as LinuxKit's init).
rt_path() { case "$2" in /*) echo "$2" ;; *) echo "${1%/}/rootfs/$2" ;; esac; }

# Does the container need its process id before it starts (interfaces, bindNS)?
needs_prepare_process() {
	[ -n "$RT_FLAT" ] || return 1
	printf '%s\n' "$RT_FLAT" | grep -q -e '^interfaces\.' -e '^bindNS\.[a-z]*	..*'
}

# Before the container is created (LinuxKit's prepareFilesystem): runtime.mounts (the
# destination and overlay upperdir/workdir created first), then mkdir, then cgroups.
apply_runtime() {
	local bundle i mtype dest source opts opt dir group
	bundle=${1%/}
	load_runtime "$bundle"
	[ -n "$RT_FLAT" ] || return 0
	i=0
	while mtype=$(rt_get "mounts.$i.type"); [ -n "$mtype" ] || [ -n "$(rt_get "mounts.$i.destination")" ]; do
		dest=$(rt_path "$bundle" "$(rt_get "mounts.$i.destination")")
		source=$(rt_get "mounts.$i.source")
		opts=$(rt_list "mounts.$i.options" | tr '\n' ',' | sed 's/,$//')
		i=$((i + 1))
		mkdir -p "$dest"
		is_mounted "$dest" && continue # a restarted service: mounted the first time
		for opt in $(rt_list "mounts.$((i - 1)).options"); do
			case "$opt" in upperdir=* | workdir=*) mkdir -p "${opt#*=}" ;; esac
		done
		if mount -t "${mtype:-none}" ${opts:+-o "$opts"} "${source:-none}" "$dest"; then
			log "${bundle##*/}: mounted $mtype $source at $dest"
		else
			log "${bundle##*/}: mounting $mtype $source at $dest failed"
		fi
	done
	for dir in $(rt_list mkdir); do mkdir -p "$(rt_path "$bundle" "$dir")"; done
	for group in $(rt_list cgroups); do mkdir -p "/sys/fs/cgroup/${group#/}"; done
}

# After the container is created, before it starts (LinuxKit's prepareProcess), for the
# process $2: runtime.interfaces (a veth pair is made in the root namespace and its `name`
# end moved into the container's; another `add` type is made in the container's namespace
# unless createInRoot; no `add` moves an existing interface in), then bindNS (each named
# namespace of the process bind-mounted at its path, which outlives the container).
prepare_process() {
	local bundle pid what i name add peer in_root move other ns path
	bundle=${1%/}
	pid=$2
	what=${bundle##*/}
	i=0
	while name=$(rt_get "interfaces.$i.name"); [ -n "$name" ]; do
		add=$(rt_get "interfaces.$i.add")
		peer=$(rt_get "interfaces.$i.peer")
		in_root=$(rt_get "interfaces.$i.createInRoot")
		i=$((i + 1))
		[ -n "$peer" ] && [ -z "$add" ] && add=veth
		move=yes
		if [ "$add" = veth ]; then
			[ -n "$peer" ] || { log "$what: veth $name needs a peer"; return 1; }
			ip link add "$name" type veth peer name "$peer" || { log "$what: cannot add veth $name"; return 1; }
			# busybox ip ignores the peer's name (it picks vethN): rename the peer
			other=$(ip -o link show "$name" | sed -n 's/^[0-9]*: [^@]*@\([^:]*\):.*/\1/p')
			if [ -n "$other" ] && [ "$other" != "$peer" ]; then
				ip link set dev "$other" name "$peer" || { log "$what: cannot name the peer of $name $peer"; return 1; }
			fi
		elif [ -n "$add" ] && [ "$in_root" != true ]; then
			nsenter -t "$pid" -n ip link add "$name" type "$add" || { log "$what: cannot add $add $name"; return 1; }
			move=""
		elif [ -n "$add" ]; then
			ip link add "$name" type "$add" || { log "$what: cannot add $add $name"; return 1; }
		fi
		if [ -n "$move" ]; then
			ip link set dev "$name" netns "$pid" || { log "$what: cannot move $name into the container"; return 1; }
		fi
		log "$what: interface $name${add:+ ($add${peer:+, peer $peer})} in the container"
	done
	for ns in cgroup ipc mnt net pid user uts; do
		path=$(rt_get "bindNS.$ns")
		[ -n "$path" ] || continue
		mkdir -p "${path%/*}"
		[ -e "$path" ] || : >"$path"
		is_mounted "$path" && umount "$path" 2>/dev/null # a restarted service's old one
		mount --bind "/proc/$pid/ns/$ns" "$path" || { log "$what: cannot bind its $ns namespace at $path"; return 1; }
		log "$what: $ns namespace bound at $path"
	done
}

# Start container $2 of bundle $1 in the way runtime.json needs: `runc run` (status
# returned), or, when interfaces or bindNS need the process first, `runc create`, the
# preparation, `runc start`, then wait while the process lives (its status is unknown:
# 0 is returned). apply_runtime ran before.
run_container() {
	local bundle id pidfile pid
	bundle=${1%/}
	id=$2
	if ! needs_prepare_process; then
		$RUNC run --bundle "$bundle" "$id" </dev/null
		return
	fi
	pidfile=/run/runc-pid.$id
	rm -f "$pidfile"
	$RUNC create --bundle "$bundle" --pid-file "$pidfile" "$id" </dev/null || return
	pid=$(cat "$pidfile")
	if ! prepare_process "$bundle" "$pid"; then
		$RUNC delete -f "$id" >/dev/null 2>&1
		return 1
	fi
	$RUNC start "$id" || return
	while [ -d "/proc/$pid" ]; do sleep 0.5; done
	$RUNC delete -f "$id" >/dev/null 2>&1
	return 0
}

# Run the containers of containers/onboot or containers/onshutdown one after another
# (entries may share a name: each has its own numbered directory, run in order).
run_containers_in_order() {
	kind=$1
	for bundle in /containers/"$kind"/*/; do
		[ -f "$bundle/config.json" ] || continue
		bundle=${bundle%/}
		container_id "$bundle"
		id=$CONTAINER_ID
		prepare_rootfs "$bundle"
		apply_runtime "$bundle"
		wait_for_ide "$bundle"
		mark "$kind ${bundle##*/}: starting"
		forget_container "$id"
		run_container "$bundle" "$id"
		mark "$kind ${bundle##*/}: exited with status $?"
	done
}

# The persistent data partition of disks built with --data-size: an ext4 file system
# labelled provision-data, mounted at /var/persist (before the onboot containers run).
# Missing partition: nothing to do; a failed mount is logged, never fatal.
mount_persist() {
	# no block device, no data partition (and no findfs process to say so)
	set -- /sys/class/block/*
	[ -e "$1" ] || return 0
	dev=$(findfs LABEL=provision-data 2>/dev/null) || return 0
	[ -b "$dev" ] || return 0
	mkdir -p /var/persist
	if mount -t ext4 -o noatime "$dev" /var/persist; then
		log "data partition $dev (provision-data) mounted at /var/persist"
	else
		log "data partition $dev (provision-data): mounting at /var/persist failed"
	fi
}

# --- what a network boot server asks on the kernel command line (metal machines) -------------

# CMDLINE_VALUE: the value of NAME=VALUE ($1) on the kernel command line; status 1 when
# absent (builtins only: no fork on the boot path)
cmdline_get() {
	local word line
	CMDLINE_VALUE=""
	read -r line </proc/cmdline 2>/dev/null || return 1
	for word in $line; do
		case "$word" in "$1"=*) CMDLINE_VALUE=${word#*=} && return 0 ;; esac
	done
	return 1
}

# provision.hostname=NAME (the metal target names its machines so; it wins over the image's
# /etc/hostname and the metadata's, as an explicit boot argument does) in CMDLINE_VALUE;
# status 1 when absent or not a host name
cmdline_hostname() {
	cmdline_get provision.hostname || return 1
	case "$CMDLINE_VALUE" in *[!A-Za-z0-9.-]* | "" | -*) return 1 ;; esac
	[ "${#CMDLINE_VALUE}" -le 64 ]
}

# Wait up to 10 s for the block device $1 (its driver probes while init goes on).
wait_for_block() {
	local i=0
	while [ ! -b "$1" ] && [ "$i" -lt 100 ]; do
		sleep 0.1
		i=$((i + 1))
	done
	[ -b "$1" ]
}

# The network interface a machine booted from: the one with MAC $1, else the first with a
# device behind it.
boot_interface() {
	local path first=""
	for path in /sys/class/net/*; do
		[ -e "$path/device" ] || continue
		[ -n "$first" ] || first=${path##*/}
		[ "$(cat "$path/address")" = "$1" ] && echo "${path##*/}" && return 0
	done
	[ -n "$first" ] && echo "$first"
}

# provision.install=URL provision.disk=DEV [provision.mac=MAC]: put the image at URL (a raw
# disk of the same image) onto the local disk with install-disk (a blank disk gets all of it,
# a disk of provision's layout a new boot partition, its provision-data partition kept), then
# boot on from memory. The network comes up for it alone (udhcpc on the boot interface) and
# goes down again for the image's own DHCP client. Failures are logged, never fatal.
install_from_cmdline() {
	local url disk dev result
	cmdline_get provision.install || return 0
	url=$CMDLINE_VALUE
	cmdline_get provision.disk || { log "install: no provision.disk given"; return 0; }
	disk=$CMDLINE_VALUE
	cmdline_get provision.mac
	dev=$(boot_interface "$CMDLINE_VALUE")
	[ -n "$dev" ] || { log "install: no network interface"; return 0; }
	wait_for_block "$disk" || { log "install: no disk $disk"; return 0; }
	ip link set "$dev" up
	if udhcpc -i "$dev" -f -q -n -t 10 -T 1 -s /usr/libexec/provision/udhcpc-up >/dev/null 2>&1; then
		if result=$(/usr/libexec/provision/install-disk "$url" "$disk" 2>/dev/console); then
			mark "install: $url $result onto $disk"
		else
			log "install: $url onto $disk failed (status $?): running from memory"
		fi
	else
		log "install: no DHCP lease on $dev: nothing installed"
	fi
	ip addr flush dev "$dev" 2>/dev/null
	ip link set "$dev" down 2>/dev/null
}

# provision.wipe=DEV (a wipe profile, docs/metal.md): zero the whole disk, then power off,
# which tells the metal provider the wipe is done.
wipe_from_cmdline() {
	local disk
	cmdline_get provision.wipe || return 0
	disk=$CMDLINE_VALUE
	if wait_for_block "$disk"; then
		log "wipe: zeroing $disk"
		dd if=/dev/zero of="$disk" bs=1M conv=fsync 2>/dev/null
		sync
		log "wipe: $disk zeroed, powering off"
	else
		log "wipe: no disk $disk, powering off"
	fi
	poweroff -f
}
