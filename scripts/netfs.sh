#!/usr/bin/env bash
# Real network filesystems on this machine, for tests/it/netfs.rs: a private GlusterFS
# (glusterd and its bricks on 127.0.0.2) with two volumes, each FUSE-mounted twice, and a
# private sshd on 127.0.0.3 with one directory sshfs-mounted twice. Two mounts of one
# volume behave like two nodes sharing one disk.
#
#   scripts/netfs.sh up     [--base DIR]   bring everything up (a no-op when it is up;
#                                          repairs what is down: a dead daemon, a dead
#                                          FUSE mount answering ENOTCONN...)
#   scripts/netfs.sh status [--base DIR]   print KEY=PATH of every mount point and the
#                                          daemons' PIDs; exit 0 only if all are healthy
#   scripts/netfs.sh down   [--base DIR]   unmount everything, stop every daemon this
#                                          script started (by PID), remove all state
#   scripts/netfs.sh delay  US [--base DIR]
#                                          set the per-operation delay of volume nsdelay
#                                          to US microseconds (0 = none; up first if
#                                          needed); prints what `status` prints
#
# DIR defaults to $NIX_SEED_NETFS_BASE, else /tmp/nix-seed-netfs. Needs root. Installs
# glusterfs-server, glusterfs-client, sshfs and openssh-server with apt-get if missing.
#
# Mount points (printed by `up` and `status` as KEY=PATH):
#   GLUSTER_DEFAULT_A, GLUSTER_DEFAULT_B  volume nsdefault, default caching
#   GLUSTER_STRICT_A,  GLUSTER_STRICT_B   volume nsstrict: quick-read, open-behind,
#                                         flush-behind, stat-prefetch off; mounted with
#                                         attribute/entry/negative timeouts 0 and
#                                         --fopen-keep-cache=false
#   GLUSTER_DELAY_A,   GLUSTER_DELAY_B    volume nsdelay: default caching, plus GlusterFS's
#                                         debug/delay-gen translator just above the
#                                         brick's storage/posix, delaying every file
#                                         operation (LOOKUP, CREATE, WRITE, SETATTR, ...)
#                                         by the delay (default 1000 us; see `delay`).
#                                         io-threads sit above it, so concurrent
#                                         operations overlap as on a real network disk.
#                                         GLUSTER_DELAY_US prints the current delay.
#   SSHFS_A, SSHFS_B                      BASE/sshfs-export through sshd on 127.0.0.3
#                                         (with -o no_contain_symlinks where sshfs has it)
#
# Nothing outside BASE is touched except: /run/sshd (sshd's privilege separation
# directory, created if missing and removed by `down` if this script created it), the
# brick's unix socket in /var/run/gluster and its log in /var/log/glusterfs/bricks (both
# removed by `down`), and glusterd's cmd_history.log in /var/log/glusterfs.
set -euo pipefail
# (Pipelines into grep use `grep PATTERN >/dev/null`, not `grep -q`: under pipefail a
# `grep -q` that exits early kills the writer with SIGPIPE and the match counts as a miss.)

usage() { echo "usage: $0 up|down|status [--base DIR] | $0 delay MICROSECONDS [--base DIR]" >&2; exit 2; }
[ $# -ge 1 ] || usage
cmd=$1; shift
DELAY_US=
if [ "$cmd" = delay ]; then
  [ $# -ge 1 ] && [[ "$1" =~ ^[0-9]+$ ]] || usage
  DELAY_US=$1; shift
fi
BASE=${NIX_SEED_NETFS_BASE:-/tmp/nix-seed-netfs}
while [ $# -gt 0 ]; do
  case "$1" in
    --base) [ $# -ge 2 ] || usage; BASE=$2; shift 2 ;;
    --base=*) BASE=${1#--base=}; shift ;;
    *) usage ;;
  esac
done
case "$cmd" in up|down|status|delay) ;; *) usage ;; esac
case "$BASE" in /*) ;; *) BASE="$PWD/$BASE" ;; esac
BASE=${BASE%/}
[ -n "$BASE" ] && [ "$BASE" != / ] || { echo "netfs: refusing base directory '/'" >&2; exit 2; }

GHOST=${NIX_SEED_NETFS_GLUSTER_HOST:-127.0.0.2}   # glusterd refuses 127.0.0.1 as a brick host
SHOST=${NIX_SEED_NETFS_SSH_HOST:-127.0.0.3}
SPORT=${NIX_SEED_NETFS_SSH_PORT:-2722}
VOLS=(default strict delay)
# The delay of nsdelay set by `up` when it creates the volume (microseconds per op).
DEFAULT_DELAY_US=1000
# Every file operation delay-gen knows, but not the ones FUSE issues in the background
# for nothing the test does (IPC, GETSPEC...); see delay-gen's xlator options.
DELAY_OPS=LOOKUP,CREATE,MKDIR,MKNOD,SETATTR,FSETATTR,WRITE,READ,SYMLINK,READLINK,LINK,RENAME,OPEN,STAT,FSTAT,OPENDIR,READDIR,READDIRP,FLUSH,FSYNC,FSYNCDIR,UNLINK,RMDIR,TRUNCATE,FTRUNCATE,SETXATTR,GETXATTR,FSETXATTR,FGETXATTR,REMOVEXATTR,FREMOVEXATTR,ACCESS,STATFS,LK,INODELK,FINODELK,ENTRYLK,FENTRYLK,XATTROP,FXATTROP,FALLOCATE,DISCARD,ZEROFILL,SEEK,LEASE
GL=$BASE/gluster            # glusterd.vol, working dir, run dir
RUN=$BASE/run               # our pid files
LOG=$BASE/log
MNT=$BASE/mnt
SSHD_DIR=$BASE/ssh
EXPORT=$BASE/sshfs-export

say() { echo "netfs: $*" >&2; }
die() { echo "netfs: error: $*" >&2; exit 1; }
now() { date +%s.%N; }
T0=$(now)
elapsed() { awk -v a="$T0" -v b="$(now)" 'BEGIN { printf "%.1fs", b - a }'; }

[ "$(id -u)" = 0 ] || die "must run as root (FUSE mounts, glusterd, sshd)"

gcli() { gluster --mode=script --glusterd-sock="$GL/run/glusterd.socket" --log-file="$LOG/cli.log" "$@"; }

# ---------------------------------------------------------------------------------------
# processes

# alive PID [PATTERN]: PID runs (not a zombie) and its command line contains PATTERN.
alive() {
  local pid=$1 pat=${2:-} st cmdl
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  st=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) || return 1
  [ -n "$st" ] && [ "$st" != Z ] && [ "$st" != X ] || return 1
  [ -z "$pat" ] && return 0
  cmdl=$(tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null) || return 1
  [[ "$cmdl" == *"$pat"* ]]
}

pidof_file() { local f=$1; [ -s "$f" ] && tr -dc 0-9 < "$f" || true; }

# stop PID: SIGTERM, up to 5 s, then SIGKILL; waits until it is gone.
stop_pid() {
  local pid=$1
  alive "$pid" || return 0
  kill -CONT "$pid" 2>/dev/null || true   # a stopped (frozen) client cannot handle TERM
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 50); do alive "$pid" || return 0; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  for _ in $(seq 50); do alive "$pid" || return 0; sleep 0.1; done
  say "warning: pid $pid does not exit"
}

# PIDs of processes whose command line mentions BASE (every daemon and client this
# script starts has BASE in its arguments), of the given command names.
base_pids() {
  local p comm cmdl
  for p in /proc/[0-9]*; do
    p=${p#/proc/}
    comm=$(cat "/proc/$p/comm" 2>/dev/null) || continue
    case " $* " in *" $comm "*) ;; *) continue ;; esac
    if alive "$p" "$BASE/"; then echo "$p"; fi
  done
  return 0
}

# ---------------------------------------------------------------------------------------
# mounts

mountinfo_type() { # mount point -> fs type, if mounted
  awk -v mp="$1" '$5 == mp { for (i = 7; i <= NF; i++) if ($i == "-") { print $(i+1); exit } }' /proc/self/mountinfo
}

# healthy MP TYPE: mounted with that fs type and answering (a dead FUSE client gives
# ENOTCONN, a hung one a timeout).
healthy() {
  local mp=$1 type=$2
  [ "$(mountinfo_type "$mp")" = "$type" ] || return 1
  timeout -k 2 5 stat -f "$mp" >/dev/null 2>&1 || return 1
  timeout -k 2 5 ls "$mp" >/dev/null 2>&1
}

# Unmount MP (however often it is stacked), lazily if busy or dead.
unmount() {
  local mp=$1 n=0
  while [ -n "$(mountinfo_type "$mp")" ] && [ $n -lt 5 ]; do
    umount "$mp" 2>/dev/null || umount -l "$mp" 2>/dev/null || true
    n=$((n + 1))
  done
}

wait_healthy() { # MP TYPE SECONDS
  for _ in $(seq $(($3 * 20))); do healthy "$1" "$2" && return 0; sleep 0.05; done
  return 1
}

# ---------------------------------------------------------------------------------------
# packages

ensure_packages() {
  local need=() p
  command -v glusterd >/dev/null || [ -x /usr/sbin/glusterd ] || need+=(glusterfs-server)
  { command -v glusterfs >/dev/null || [ -x /usr/sbin/glusterfs ]; } || need+=(glusterfs-client)
  command -v sshfs >/dev/null || need+=(sshfs)
  [ -x /usr/sbin/sshd ] || need+=(openssh-server)
  command -v ssh-keygen >/dev/null || need+=(openssh-client)
  command -v ss >/dev/null || need+=(iproute2)
  [ ${#need[@]} -eq 0 ] && return 0
  command -v apt-get >/dev/null || die "missing packages ${need[*]} and no apt-get: install ${need[*]}"
  say "installing ${need[*]}"
  if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >"${TMPDIR:-/tmp}/netfs-apt.log" 2>&1; }; then
    tail -20 "${TMPDIR:-/tmp}/netfs-apt.log" >&2 || true
    die "apt-get install ${need[*]} failed"
  fi
  for p in "${need[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || die "package $p is still not installed"
  done
  # Debian starts installed services where it can: stop any that did, by PID.
  local pid
  for pid in $(pidof glusterd 2>/dev/null || true); do
    alive "$pid" "$BASE/" || { say "stopping glusterd $pid started by the package install"; stop_pid "$pid"; }
  done
}

PATH=$PATH:/usr/sbin:/sbin

# ---------------------------------------------------------------------------------------
# GlusterFS

brick() { echo "$BASE/bricks/$1"; }
volname() { echo "ns$1"; }

glusterd_pid() { local p; p=$(pidof_file "$GL/run/glusterd.pid"); alive "$p" "$GL/glusterd.vol" && echo "$p" || true; }

ensure_glusterd() {
  [ -n "$(glusterd_pid)" ] && return 0
  mkdir -p "$GL/wd" "$GL/run" "$LOG"
  if ss -Hltn "src $GHOST:24007" 2>/dev/null | grep . >/dev/null || ss -Hltn 'sport = :24007' | grep '0.0.0.0:24007\|\*:24007' >/dev/null; then
    die "port $GHOST:24007 is taken by another process (a system glusterd?): stop it first"
  fi
  cat > "$GL/glusterd.vol" <<EOF
volume management
    type mgmt/glusterd
    option working-directory $GL/wd
    option run-directory $GL/run
    option glusterd-sockfile $GL/run/glusterd.socket
    option transport-type socket
    option transport.socket.bind-address $GHOST
    option transport.socket.listen-port 24007
    option transport.socket.keepalive-time 10
    option transport.socket.keepalive-interval 2
    option transport.socket.read-fail-log off
    option ping-timeout 0
    option event-threads 1
    option max-port 60999
end-volume
EOF
  rm -f "$GL/run/glusterd.pid"
  glusterd -f "$GL/glusterd.vol" -p "$GL/run/glusterd.pid" -l "$LOG/glusterd.log" \
    </dev/null >>"$LOG/glusterd.out" 2>&1 || die "glusterd did not start (see $LOG/glusterd.log)"
  for _ in $(seq 300); do
    [ -n "$(glusterd_pid)" ] && gcli volume list >/dev/null 2>&1 && { say "glusterd up ($(elapsed))"; return 0; }
    sleep 0.1
  done
  die "glusterd does not answer (see $LOG/glusterd.log)"
}

brick_online() { gcli volume status "$(volname "$1")" --xml 2>/dev/null | grep '<status>1</status>' >/dev/null; }

ensure_volume() {
  local v=$1 name; name=$(volname "$v")
  if ! gcli volume info "$name" >/dev/null 2>&1; then
    mkdir -p "$(brick "$v")"
    gcli volume create "$name" "$GHOST:$(brick "$v")" force >/dev/null || die "gluster volume create $name failed"
    if [ "$v" = strict ]; then
      gcli volume set "$name" performance.quick-read off performance.open-behind off \
        performance.flush-behind off performance.stat-prefetch off >/dev/null \
        || die "gluster volume set $name failed"
    fi
    if [ "$v" = delay ]; then
      gcli volume set "$name" debug.delay-gen posix >/dev/null || die "gluster volume set $name debug.delay-gen posix failed"
      gcli volume set "$name" delay-gen.delay-percentage 100 >/dev/null \
        && gcli volume set "$name" delay-gen.enable "$DELAY_OPS" >/dev/null \
        && gcli volume set "$name" delay-gen.delay-duration "$DEFAULT_DELAY_US" >/dev/null \
        || die "gluster volume set $name delay-gen.* failed"
    fi
  fi
  if ! gcli volume info "$name" | grep '^Status: Started' >/dev/null; then
    gcli volume start "$name" >/dev/null || die "gluster volume start $name failed"
  elif ! brick_online "$v"; then
    say "brick of $name is down: restarting it"
    gcli volume start "$name" force >/dev/null || die "gluster volume start $name force failed"
  fi
  for _ in $(seq 100); do brick_online "$v" && { say "volume $name up ($(elapsed))"; return 0; }; sleep 0.1; done
  die "the brick of $name is not online (see /var/log/glusterfs/bricks/)"
}

# The delay of nsdelay now, in microseconds (empty if glusterd does not answer).
delay_us() {
  gcli volume get "$(volname delay)" delay-gen.delay-duration 2>/dev/null \
    | awk '$1 == "delay-gen.delay-duration" { print $2 }' || true
}

# Set the delay of nsdelay. delay-gen reads its options only when the brick starts (a
# `volume set` on a running volume changes the volfile, but the running translator keeps
# its old delay: measured with glusterfs 10.3), so the volume is restarted and the mounts
# wait for their client to reconnect (a few seconds).
set_delay() {
  local name mp; name=$(volname delay)
  [ "$(delay_us)" = "$1" ] && return 0
  gcli volume set "$name" delay-gen.delay-duration "$1" >/dev/null \
    || die "gluster volume set $name delay-gen.delay-duration $1 failed"
  gcli volume stop "$name" >/dev/null || die "gluster volume stop $name failed"
  ensure_volume delay
  for mp in "$MNT/gluster-delay-a" "$MNT/gluster-delay-b"; do
    wait_healthy "$mp" fuse.glusterfs 30 || die "$mp does not answer after the restart of $name"
  done
}

# KEY MOUNTPOINT VOLUME-KIND
mount_keys() {
  local v side
  for v in "${VOLS[@]}"; do for side in A B; do
    echo "GLUSTER_${v^^}_$side $MNT/gluster-$v-${side,,} $v"
  done; done
  for side in A B; do echo "SSHFS_$side $MNT/sshfs-${side,,} sshfs"; done
}

client_pidfile() { echo "$RUN/$(basename "$1").pid"; }

# Kill the client of a mount point (if any) and unmount it.
drop_mount() {
  local mp=$1 pid
  pid=$(pidof_file "$(client_pidfile "$mp")")
  alive "$pid" "$mp" && stop_pid "$pid"
  unmount "$mp"
  rm -f "$(client_pidfile "$mp")"
}

ensure_gluster_mount() {
  local mp=$1 v=$2 opts=()
  healthy "$mp" fuse.glusterfs && return 0
  if [ -n "$(mountinfo_type "$mp")" ]; then say "$mp is mounted but dead (ENOTCONN or hung): remounting"; fi
  drop_mount "$mp"
  mkdir -p "$mp"
  if [ "$v" = strict ]; then opts=(--attribute-timeout=0 --entry-timeout=0 --negative-timeout=0 --fopen-keep-cache=false); fi
  glusterfs --volfile-server="$GHOST" --volfile-id="$(volname "$v")" "${opts[@]}" \
    -l "$LOG/$(basename "$mp").log" -p "$(client_pidfile "$mp")" "$mp" \
    </dev/null >>"$LOG/$(basename "$mp").out" 2>&1 || die "glusterfs mount of $(volname "$v") at $mp failed (see $LOG/$(basename "$mp").log)"
}

# ---------------------------------------------------------------------------------------
# sshd and sshfs

sshd_pid() { local p; p=$(pidof_file "$RUN/sshd.pid"); alive "$p" "$SSHD_DIR/sshd_config" && echo "$p" || true; }

ensure_sshd() {
  [ -n "$(sshd_pid)" ] && return 0
  mkdir -p "$SSHD_DIR" "$RUN" "$LOG" "$EXPORT"
  chmod 700 "$SSHD_DIR"
  [ -s "$SSHD_DIR/host_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -C netfs-host -f "$SSHD_DIR/host_ed25519"
  [ -s "$SSHD_DIR/client_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -C netfs-client -f "$SSHD_DIR/client_ed25519"
  cp "$SSHD_DIR/client_ed25519.pub" "$SSHD_DIR/authorized_keys"
  { printf '%s ' "[$SHOST]:$SPORT"; cut -d' ' -f1,2 "$SSHD_DIR/host_ed25519.pub"; } > "$SSHD_DIR/known_hosts"
  cat > "$SSHD_DIR/sshd_config" <<EOF
ListenAddress $SHOST:$SPORT
HostKey $SSHD_DIR/host_ed25519
PidFile $RUN/sshd.pid
AuthorizedKeysFile $SSHD_DIR/authorized_keys
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
UseDNS no
MaxStartups 100
Subsystem sftp internal-sftp
EOF
  cat > "$SSHD_DIR/ssh_config" <<EOF
Host netfs
  HostName $SHOST
  Port $SPORT
  User root
  IdentityFile $SSHD_DIR/client_ed25519
  IdentitiesOnly yes
  UserKnownHostsFile $SSHD_DIR/known_hosts
  StrictHostKeyChecking yes
  BatchMode yes
  LogLevel ERROR
EOF
  if [ ! -d /run/sshd ]; then mkdir -p /run/sshd && chmod 755 /run/sshd && touch "$BASE/.created-run-sshd"; fi
  if ss -Hltn "src $SHOST:$SPORT" | grep . >/dev/null; then die "port $SHOST:$SPORT is taken: set NIX_SEED_NETFS_SSH_PORT"; fi
  /usr/sbin/sshd -t -f "$SSHD_DIR/sshd_config" || die "sshd rejects $SSHD_DIR/sshd_config"
  rm -f "$RUN/sshd.pid"
  /usr/sbin/sshd -f "$SSHD_DIR/sshd_config" -E "$LOG/sshd.log" </dev/null >/dev/null 2>&1 || die "sshd did not start (see $LOG/sshd.log)"
  for _ in $(seq 100); do
    [ -n "$(sshd_pid)" ] && ss -Hltn "src $SHOST:$SPORT" | grep . >/dev/null && return 0
    sleep 0.05
  done
  die "sshd is not listening on $SHOST:$SPORT (see $LOG/sshd.log)"
}

ensure_sshfs_mount() {
  local mp=$1 pid
  healthy "$mp" fuse.sshfs && return 0
  if [ -n "$(mountinfo_type "$mp")" ]; then say "$mp is mounted but dead: remounting"; fi
  drop_mount "$mp"
  mkdir -p "$mp"
  # Debian's sshfs (3.7.3 with the fix for CVE-2026-47187) rejects symlink targets that are
  # absolute or contain `..` (readlink gives EPERM) unless told otherwise: a Nix store is
  # full of both, so a store on sshfs only works with no_contain_symlinks.
  # (The help text goes to a variable first: `sshfs --help | grep -q` under pipefail fails
  # whenever grep exits before sshfs has written everything and sshfs dies of SIGPIPE.)
  local opts=() help
  help=$(sshfs --help 2>&1 || true)
  if grep -q no_contain_symlinks <<<"$help"; then opts=(-o no_contain_symlinks); fi
  # -f in the background, so that the PID we record is sshfs's own.
  setsid sshfs -f -F "$SSHD_DIR/ssh_config" "${opts[@]}" "netfs:$EXPORT" "$mp" \
    </dev/null >>"$LOG/$(basename "$mp").log" 2>&1 &
  pid=$!
  echo "$pid" > "$(client_pidfile "$mp")"
}

# ---------------------------------------------------------------------------------------

print_status() {
  local ok=0 key mp v type pids p
  while read -r key mp v; do
    type=fuse.glusterfs; [ "$v" = sshfs ] && type=fuse.sshfs
    echo "$key=$mp"
    if ! healthy "$mp" "$type"; then
      say "$key ($mp): $( [ -n "$(mountinfo_type "$mp")" ] && echo 'mounted but not answering' || echo 'not mounted')"
      ok=1
    fi
  done < <(mount_keys)
  echo "NETFS_BASE=$BASE"
  p=$(glusterd_pid); echo "GLUSTERD_PID=$p"; [ -n "$p" ] || { say "glusterd is not running"; ok=1; }
  pids=""
  for v in "${VOLS[@]}"; do
    for p in "$GL"/run/vols/"$(volname "$v")"/*.pid; do
      p=$(pidof_file "$p")
      if alive "$p" "$(brick "$v")"; then pids="$pids $p"; else say "brick of $(volname "$v") is not running"; ok=1; fi
    done
  done
  echo "GLUSTERFSD_PIDS=${pids# }"
  echo "GLUSTER_DELAY_US=$(delay_us)"
  pids=""
  while read -r key mp v; do
    p=$(pidof_file "$(client_pidfile "$mp")")
    alive "$p" "$mp" && pids="$pids $p" || ok=1
    [ "$v" = sshfs ] && continue
    echo "${key}_PID=$p"
  done < <(mount_keys)
  p=$(sshd_pid); echo "SSHD_PID=$p"; [ -n "$p" ] || { say "sshd is not running"; ok=1; }
  for key in SSHFS_A SSHFS_B; do
    p=$(pidof_file "$(client_pidfile "$MNT/sshfs-$( [ $key = SSHFS_A ] && echo a || echo b)")")
    echo "${key}_PID=$p"
  done
  return $ok
}

do_up() {
  # Already up and healthy: nothing to do.
  if [ -d "$BASE" ] && print_status >"$BASE/.status" 2>/dev/null; then
    cat "$BASE/.status"; rm -f "$BASE/.status"; return 0
  fi
  rm -f "$BASE/.status"
  ensure_packages
  [ -c /dev/fuse ] || modprobe fuse 2>/dev/null || true
  [ -c /dev/fuse ] || die "/dev/fuse is missing (load the fuse module)"
  mkdir -p "$BASE" "$RUN" "$LOG" "$MNT"
  # sshd first (0.1 s), then glusterd (2-3 s, most of it glusterd's own start-up).
  ensure_sshd
  say "sshd up ($(elapsed))"
  ensure_glusterd
  local v key mp kind
  for v in "${VOLS[@]}"; do ensure_volume "$v"; done
  # Start every mount, then wait for them together.
  while read -r key mp kind; do
    if [ "$kind" = sshfs ]; then ensure_sshfs_mount "$mp"; else ensure_gluster_mount "$mp" "$kind"; fi
  done < <(mount_keys)
  while read -r key mp kind; do
    local type=fuse.glusterfs; [ "$kind" = sshfs ] && type=fuse.sshfs
    wait_healthy "$mp" "$type" 30 || die "$key: $mp did not come up (see $LOG/$(basename "$mp").log)"
  done < <(mount_keys)
  say "up in $(elapsed)"
  print_status
}

do_down() {
  # Works even if BASE was removed by hand: mounts and processes are found by path.
  local mp p sock pids
  # 1. every mount below BASE, deepest first
  while read -r mp; do
    [ -n "$mp" ] || continue
    unmount "$mp"
  done < <(awk -v b="$BASE/" 'index($5, b) == 1 { print length($5), $5 }' /proc/self/mountinfo | sort -rn | cut -d' ' -f2-)
  say "unmounted ($(elapsed))"
  # 2. FUSE clients (they exit on unmount; a hung one is killed), sshfs's ssh, sshd
  for p in "$RUN"/*.pid; do  # (none if BASE is gone)
    [ -e "$p" ] || continue
    p=$(pidof_file "$p"); alive "$p" "$BASE/" && stop_pid "$p"
  done
  # 3. bricks (remember their unix sockets and logs), then glusterd
  for p in $(base_pids glusterfsd); do
    sock=$(tr '\0' '\n' < "/proc/$p/cmdline" | awk 'prev == "-S" { print } { prev = $0 }')
    stop_pid "$p"
    case "$sock" in /var/run/gluster/*.socket|/run/gluster/*.socket) rm -f "$sock" ;; esac
  done
  p=$(glusterd_pid); [ -n "$p" ] && stop_pid "$p"
  # 4. anything else started with BASE in its arguments (a client whose pid file was lost)
  pids=$(base_pids glusterd glusterfsd glusterfs sshfs ssh sshd)
  for p in $pids; do stop_pid "$p"; done
  for v in "${VOLS[@]}"; do
    local b; b=$(brick "$v"); b=${b#/}
    rm -f "/var/log/glusterfs/bricks/${b//\//-}.log"
  done
  if [ -e "$BASE/.created-run-sshd" ]; then rmdir /run/sshd 2>/dev/null || true; fi
  say "stopped every daemon ($(elapsed))"
  # Mounts again (a lazily unmounted one is gone by now), then the state.
  [ -z "$(awk -v b="$BASE/" 'index($5, b) == 1' /proc/self/mountinfo)" ] || die "mounts remain below $BASE"
  rm -rf --one-file-system "$BASE"
  say "down ($(elapsed))"
}

case "$cmd" in
  up) do_up ;;
  status) [ -d "$BASE" ] || { say "not up ($BASE does not exist)"; exit 1; }; print_status ;;
  down) do_down ;;
  delay) do_up >/dev/null; set_delay "$DELAY_US"; say "delay of $(volname delay): $DELAY_US us per operation"; print_status ;;
esac
