# shellcheck shell=bash
# Sourced by build-rig and the fetch-*/build-*/make-* steps. Not a program of its own.
#
# Where things go:
#   RIG       the rig folder (the cache): $VSMMUD_RIG_CACHE, else ${XDG_CACHE_HOME:-$HOME/.cache}/vsmmud/rig.
#             Its layout is the one `boot` reads: qemu/ firmware/ kernel/ initrd/ include/ extra/ run/.
#   RIG_WORK  scratch (downloaded .debs, unpacked packages, the kernel tree): $RIG_WORK, else $RIG/work.
#             Removing it loses nothing that `boot` needs; the next build downloads again.
#   RIG_MIRROR  the Debian mirror (default http://deb.debian.org/debian).
#
# The private apt configuration (rig_apt_init, rig_apt) reads and writes only $RIG_WORK/apt: its own
# sources.list (trixie + trixie-backports, amd64 + arm64), lists, cache, and an empty dpkg status, so
# every package looks not installed. It is only used to `apt-get download` packages that the steps
# then unpack with `dpkg -x`. Nothing is installed into the system: trixie's QEMU needs trixie's
# glibc, and installing that on Debian 12 would upgrade the system's libc.

RIG_SCRIPTS=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
RIG=${VSMMUD_RIG_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vsmmud/rig}
RIG_WORK=${RIG_WORK:-$RIG/work}
RIG_MIRROR=${RIG_MIRROR:-http://deb.debian.org/debian}
export VSMMUD_RIG_CACHE=$RIG RIG_WORK RIG_MIRROR

rig_say() { printf '%s: %s\n' "${0##*/}" "$*" >&2; }
rig_die() { rig_say "error: $*"; exit 1; }

# rig_record KEY VALUE: keep one line "KEY VALUE" in $RIG/VERSIONS (what this cache was built from).
rig_record() {
	mkdir -p "$RIG"
	local f=$RIG/VERSIONS
	{ grep -v -E "^$1 " "$f" 2>/dev/null || true; printf '%s %s\n' "$1" "$2"; } | sort > "$f.new"
	mv "$f.new" "$f"
}

rig_apt_init() {
	local ap=$RIG_WORK/apt
	local key=/usr/share/keyrings/debian-archive-keyring.gpg
	[ -r "$key" ] || rig_die "$key is missing (apt-get install debian-archive-keyring)"
	mkdir -p "$ap/lists/partial" "$ap/archives/partial" "$ap/etc/empty.d"
	cat > "$ap/etc/sources.list" <<-SOURCES
	deb [arch=amd64,arm64 signed-by=$key] $RIG_MIRROR trixie main
	deb [arch=amd64,arm64 signed-by=$key] $RIG_MIRROR trixie-updates main
	deb [arch=amd64,arm64 signed-by=$key] $RIG_MIRROR trixie-backports main
	SOURCES
	RIG_APT_OPTS=(
		-o Dir::Etc::SourceList="$ap/etc/sources.list" -o Dir::Etc::SourceParts="$ap/etc/empty.d"
		-o Dir::Etc::Preferences="$ap/etc/preferences" -o Dir::Etc::PreferencesParts="$ap/etc/empty.d"
		-o Dir::State::Lists="$ap/lists" -o Dir::State::status=/dev/null
		-o Dir::Cache="$ap" -o Dir::Cache::archives="$ap/archives"
		-o APT::Architecture=amd64 -o APT::Architectures::=amd64 -o APT::Architectures::=arm64
		-o APT::Default-Release=trixie -o Debug::NoLocking=true
		-o APT::Get::List-Cleanup=false -o Acquire::Languages=none -q)
	if [ "$(id -u)" = 0 ]; then RIG_APT_OPTS+=(-o APT::Sandbox::User=root); fi   # _apt cannot write here
	# One `apt-get update` per scratch folder (RIG_APT_UPDATE=1 forces another).
	if [ ! -e "$ap/updated" ] || [ -n "${RIG_APT_UPDATE:-}" ]; then
		rig_say "apt-get update (private config in $ap)"
		apt-get "${RIG_APT_OPTS[@]}" update >&2 || rig_die "apt-get update failed (mirror $RIG_MIRROR)"
		date -u +%FT%TZ > "$ap/updated"
	fi
}

# rig_apt ARGS...: apt-get with the private configuration.
rig_apt() { apt-get "${RIG_APT_OPTS[@]}" "$@"; }
rig_apt_cache() { apt-cache "${RIG_APT_OPTS[@]}" "$@"; }

# rig_candidate PKG[:ARCH] [SUITE]: the version apt would pick (from SUITE when given).
rig_candidate() {
	local p=$1 suite=${2:-}
	if [ -n "$suite" ]; then
		rig_apt_cache -o APT::Default-Release="$suite" policy "$p" | awk '$1 == "Candidate:" {print $2}'
	else
		rig_apt_cache policy "$p" | awk '$1 == "Candidate:" {print $2}'
	fi
}

# rig_download DIR PKG[:ARCH]=VERSION...: download those .debs into DIR (kept: a rerun reuses them).
rig_download() {
	local dir=$1; shift
	mkdir -p "$dir"
	(cd "$dir" && rig_apt download "$@" >&2) || rig_die "apt-get download $* failed"
}

# rig_deb DIR PKG VERSION ARCH: the path of that downloaded .deb (apt writes an epoch's ':' as %3a).
rig_deb() {
	local f
	for f in "$1/$2_${3/:/%3a}_$4.deb" "$1/$2_${3#*:}_$4.deb"; do
		[ -e "$f" ] && { echo "$f"; return 0; }
	done
	rig_die "no $2 $3 ($4) in $1"
}

# rig_timed NAME CMD...: run CMD, print how long it took.
rig_timed() {
	local name=$1 t0 ms; shift
	t0=$(date +%s%N)
	"$@"
	ms=$(( ($(date +%s%N) - t0) / 1000000 ))
	printf '%s: %s took %d.%01d s\n' "${0##*/}" "$name" $((ms / 1000)) $((ms % 1000 / 100)) >&2
}
