#!/usr/bin/env bash
# A real single-node SLURM cluster for CI and local testing (Debian/Ubuntu packages, loopback only).
#
#   ci/slurm/slurm-ci.sh install       apt-get the packages (idempotent, non-interactive)
#   ci/slurm/slurm-ci.sh up            start munge, MariaDB, slurmdbd, slurmctld, slurmd; wait for the node
#   ci/slurm/slurm-ci.sh down          cancel every job, stop every daemon by the PID recorded at `up`,
#                                      remove the slurm.conf / slurmdbd.conf it wrote
#   ci/slurm/slurm-ci.sh status        sinfo + squeue + the recorded PIDs
#   ci/slurm/slurm-ci.sh run CMD...    install, up, run CMD, down (also when CMD fails); exit with CMD's status
#
# Must run as root (it writes /etc/slurm/slurm.conf and starts daemons); needs no stdin and no
# systemd. Everything it starts is recorded in $RANKE_SLURM_STATE/pids ("name pid" lines) and is
# stopped by that PID only. slurmdbd + MariaDB are there so that `sacct` works: without accounting
# the Snakemake SLURM plugin hangs forever on status checks and submitit never notices a cancelled job.
#
# Knobs (environment):
#   RANKE_SLURM_STATE   state, logs, PIDs, private MariaDB datadir (default /var/spool/ranke-slurm-ci;
#                       all but the MariaDB datadir is wiped by `up`, the accounting DB is recreated)
#   RANKE_SLURM_CPUS    CPUs the node advertises (default: nproc). More than nproc oversubscribes the
#                       cores (SlurmdParameters=config_overrides), which lets more 1-CPU jobs run at once.
#   RANKE_SLURM_DB_PORT MariaDB TCP port, bound to 127.0.0.1 only (default 3307, so that a system
#                       MariaDB on 3306 is left alone)
#
# Network: slurmctld (6817), slurmd (6818) and slurmdbd (6819) bind the address the host name
# resolves to, which this script pins to 127.0.0.1 in /etc/hosts when the name does not resolve;
# MariaDB listens on 127.0.0.1 only.

set -uo pipefail

STATE=${RANKE_SLURM_STATE:-/var/spool/ranke-slurm-ci}
DB_PORT=${RANKE_SLURM_DB_PORT:-3307}
PARTITION=debug
CLUSTER=ci
MARKER="# written by ranke ci/slurm/slurm-ci.sh"
PACKAGES="slurmctld slurmd slurm-client munge slurmdbd mariadb-server"

log() { echo "[slurm-ci] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

wait_for() { # wait_for SECONDS CMD...: poll CMD every 0.2 s until it succeeds
  local tries=$(($1 * 5))
  shift
  for _ in $(seq 1 "$tries"); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  return 1
}

ms_since() { echo $((($(date +%s%N) - $1) / 1000000)); }

require_root() { [ "$(id -u)" -eq 0 ] || die "must run as root (it writes /etc/slurm and starts daemons)"; }

# ------------------------------------------------------------------------------------------------
# install

cmd_install() {
  require_root
  # shellcheck disable=SC2086
  if dpkg -s $PACKAGES >/dev/null 2>&1; then
    log "packages already installed"
    return 0
  fi
  command -v apt-get >/dev/null || die "apt-get not found: install SLURM ($PACKAGES) by hand"
  local t0 policy_added=0
  t0=$(date +%s%N)
  export DEBIAN_FRONTEND=noninteractive
  # Keep the package scripts from starting services (munge, mariadb) themselves: this script
  # starts exactly what it needs and records the PIDs. Container images usually ship this file.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d
    policy_added=1
  fi
  local rc=0
  apt-get update -qq </dev/null || rc=$?
  if [ "$rc" -eq 0 ]; then
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends -o Dpkg::Options::=--force-confdef \
      -o Dpkg::Options::=--force-confold $PACKAGES </dev/null >"${TMPDIR:-/tmp}/ranke-slurm-apt.log" 2>&1 || rc=$?
  fi
  [ "$policy_added" -eq 1 ] && rm -f /usr/sbin/policy-rc.d
  if [ "$rc" -ne 0 ]; then
    tail -20 "${TMPDIR:-/tmp}/ranke-slurm-apt.log" >&2 2>/dev/null
    die "apt-get failed (exit $rc)"
  fi
  log "installed $PACKAGES in $(ms_since "$t0") ms"
}

# ------------------------------------------------------------------------------------------------
# configuration

write_slurm_conf() {
  local host=$1 cpus mem extra=""
  cpus=${RANKE_SLURM_CPUS:-$(nproc)}
  # RealMemory must not exceed what slurmd measures, or the node is drained: MemTotal - 1 GiB.
  mem=$(($(awk '/MemTotal/{print int($2/1024)}' /proc/meminfo) - 1024))
  [ "$cpus" -gt "$(nproc)" ] && extra="SlurmdParameters=config_overrides"
  if [ -e /etc/slurm/slurm.conf ] && ! grep -qF "$MARKER" /etc/slurm/slurm.conf; then
    die "/etc/slurm/slurm.conf exists and was not written by this script: not touching a real cluster"
  fi
  mkdir -p /etc/slurm
  cat >/etc/slurm/slurm.conf <<EOF
$MARKER
ClusterName=$CLUSTER
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
# bind to the address the host name resolves to (127.0.0.1), not to every interface
CommunicationParameters=NoInAddrAny,NoCtldInAddrAny
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
# no cgroups needed (containers often lack a usable cgroup tree)
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
# cores are consumable, memory is not: a job's --mem only has to fit the node
SelectTypeParameters=CR_Core
SchedulerParameters=sched_interval=1
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
# the Snakemake plugin puts rule + wildcards in the job comment: keep it for sacct
AccountingStoreFlags=job_comment
JobAcctGatherType=jobacct_gather/linux
JobCompType=jobcomp/none
# finished jobs stay visible to squeue/scontrol for 10 min (status checks by squeue need >= 120 s)
MinJobAge=600
ReturnToService=2
# SIGTERM -> SIGKILL grace for cancelled jobs (default 30 s)
KillWait=5
MpiDefault=none
MailProg=/bin/true
$extra
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=$PARTITION Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
}

write_slurmdbd_conf() {
  local host=$1
  cat >/etc/slurm/slurmdbd.conf <<EOF
$MARKER
AuthType=auth/munge
DbdHost=$host
DbdAddr=127.0.0.1
# bind to the address the host name resolves to (127.0.0.1), as in slurm.conf
CommunicationParameters=NoInAddrAny
SlurmUser=root
PidFile=$STATE/run/slurmdbd.pid
LogFile=$STATE/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageLoc=slurm_acct_db
StorageUser=slurm
StoragePass=ranke-ci
EOF
  chmod 600 /etc/slurm/slurmdbd.conf
}

# ------------------------------------------------------------------------------------------------
# up

record() { # record NAME PIDFILE: append "NAME PID" to the PID list
  local pid
  pid=$(cat "$2" 2>/dev/null) || return 1
  [ -n "$pid" ] || return 1
  echo "$1 $pid" >>"$STATE/pids"
}

start_munge() {
  mkdir -p /run/munge && chown munge:munge /run/munge && chmod 755 /run/munge
  if [ ! -s /etc/munge/munge.key ]; then
    mungekey --create --keyfile=/etc/munge/munge.key || return 1
    chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
  fi
  local pidfile=$STATE/run/munged.pid
  : >"$pidfile" && : >"$STATE/log/munged.log"
  chown munge:munge "$pidfile" "$STATE/log/munged.log"
  # munged refuses to run as root; --force takes over a stale socket left by a killed munged
  runuser -u munge -- /usr/sbin/munged --force --pid-file="$pidfile" \
    --log-file="$STATE/log/munged.log" </dev/null || return 1
  wait_for 10 test -s "$pidfile" || { log "munged wrote no PID file"; return 1; }
  record munged "$pidfile"
  munge -n | unmunge >/dev/null || { log "munge self-test failed"; return 1; }
}

start_mariadb() {
  local datadir=$STATE/mysql sock=$STATE/run/mysqld.sock
  mkdir -p "$datadir" && chown mysql:mysql "$datadir" "$STATE/run" "$STATE/log"
  # A private datadir, kept between starts (creating it takes seconds): a system MariaDB, if any,
  # is never touched, and --no-defaults ignores /etc/mysql.
  if [ ! -d "$datadir/mysql" ]; then
    mariadb-install-db --no-defaults --datadir="$datadir" --user=mysql \
      --auth-root-authentication-method=socket --skip-test-db \
      --innodb-log-file-size=16M >"$STATE/log/mariadb-install.log" 2>&1 ||
      { log "mariadb-install-db failed, see $STATE/log/mariadb-install.log"; return 1; }
  fi
  # mariadbd does not daemonize: its PID is the background job's (setsid execs in place here)
  setsid /usr/sbin/mariadbd --no-defaults --user=mysql --datadir="$datadir" \
    --bind-address=127.0.0.1 --port="$DB_PORT" --skip-name-resolve --socket="$sock" \
    --pid-file="$STATE/run/mariadbd.pid" --log-error="$STATE/log/mariadb.log" \
    --innodb-buffer-pool-size=64M --innodb-log-file-size=16M --innodb-lock-wait-timeout=900 \
    </dev/null >/dev/null 2>&1 &
  echo "mariadbd $!" >>"$STATE/pids"
  wait_for 60 mariadb-admin --no-defaults --socket="$sock" ping ||
    { log "mariadb did not start:"; tail -20 "$STATE/log/mariadb.log" >&2; return 1; }
  mariadb --no-defaults --socket="$sock" <<'SQL' || return 1
DROP DATABASE IF EXISTS slurm_acct_db;
CREATE DATABASE slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'ranke-ci';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
FLUSH PRIVILEGES;
SQL
}

start_slurmdbd() {
  write_slurmdbd_conf "$1"
  /usr/sbin/slurmdbd </dev/null || return 1 # daemonizes
  wait_for 30 bash -c 'exec 3<>/dev/tcp/127.0.0.1/6819' ||
    { log "slurmdbd not listening:"; tail -20 "$STATE/log/slurmdbd.log" >&2; return 1; }
  record slurmdbd "$STATE/run/slurmdbd.pid"
}

daemons() { # "name pid" of everything this script started: the PID list, plus the daemons' own
  # PID files (a daemon whose start timed out before it was recorded is still stopped)
  local name pid
  {
    [ -s "$STATE/pids" ] && cat "$STATE/pids"
    for name in munged slurmdbd slurmctld slurmd; do
      pid=$(cat "$STATE/run/$name.pid" 2>/dev/null) && [ -n "$pid" ] && echo "$name $pid"
    done
  } | awk '!seen[$2]++'
}

running() { # running NAME PID: PID is alive (not a zombie) and still runs program NAME (not a reused PID)
  [ -n "$2" ] && [ "$(cat /proc/"$2"/comm 2>/dev/null)" = "$1" ] &&
    [ "$(awk '{print $3}' /proc/"$2"/stat 2>/dev/null)" != Z ]
}

live_pids() { # the daemons this script started that still run
  local name pid
  while read -r name pid; do
    running "$name" "$pid" && echo "$name $pid"
  done <<<"$(daemons)"
}

cmd_up() {
  require_root
  local t0 host
  t0=$(date +%s%N)
  for exe in /usr/sbin/slurmctld /usr/sbin/slurmd /usr/sbin/slurmdbd /usr/sbin/munged /usr/sbin/mariadbd; do
    [ -x "$exe" ] || die "$exe not found: run '$0 install' first"
  done
  if [ -n "$(live_pids)" ]; then
    die "a cluster started by this script is still running ($(live_pids | tr '\n' ' ')): run '$0 down' first"
  fi
  host=$(hostname -s)
  getent hosts "$host" >/dev/null || echo "127.0.0.1 $host" >>/etc/hosts
  # A fresh state per start (the accounting DB is dropped below too): job ids restart at 1, and
  # nothing of an older run may be found under a reused id.
  rm -rf "$STATE"/{ctld,d,log,run,pids}
  mkdir -p "$STATE"/{ctld,d,log,run}
  : >"$STATE/pids"
  write_slurm_conf "$host"
  if ! { start_munge && start_mariadb && start_slurmdbd "$host"; }; then
    log "start failed; stopping what did start"
    cmd_down
    return 1
  fi
  /usr/sbin/slurmctld </dev/null && wait_for 20 scontrol ping &&
    record slurmctld "$STATE/run/slurmctld.pid" ||
    { log "slurmctld not answering:"; tail -20 "$STATE/log/slurmctld.log" >&2; cmd_down; return 1; }
  /usr/sbin/slurmd </dev/null && wait_for 20 test -s "$STATE/run/slurmd.pid" &&
    record slurmd "$STATE/run/slurmd.pid" ||
    { log "slurmd did not start:"; tail -20 "$STATE/log/slurmd.log" >&2; cmd_down; return 1; }
  if ! wait_for 30 bash -c "[ \"\$(sinfo -h -p $PARTITION -o %T)\" = idle ]"; then
    log "node not idle:"
    sinfo -N -l >&2
    tail -n 20 "$STATE"/log/slurm*.log >&2
    cmd_down
    return 1
  fi
  # slurmctld registers the cluster in slurmdbd by itself; sacct needs that
  wait_for 20 bash -c "sacctmgr -n -P list cluster format=cluster | grep -qx $CLUSTER" ||
    log "warning: cluster '$CLUSTER' not registered in slurmdbd yet (sacct may lag)"
  log "up in $(ms_since "$t0") ms: $(tr '\n' ' ' <"$STATE/pids")"
}

# ------------------------------------------------------------------------------------------------
# down

# The config files this script wrote go with the cluster: with a slurm.conf naming a controller
# that no longer runs, every SLURM client call waits ~9 s for it, and Snakemake's slurm plugin
# runs one (`scontrol show config`) whenever it is loaded, i.e. in every `snakemake` command.
remove_own_conf() {
  local f
  for f in /etc/slurm/slurm.conf /etc/slurm/slurmdbd.conf; do
    if [ -e "$f" ] && grep -qF "$MARKER" "$f"; then rm -f "$f"; fi
  done
}

cmd_down() {
  local t0 name pid list job
  list=$(daemons)
  [ -n "$list" ] || { remove_own_conf; log "nothing recorded in $STATE: nothing to stop"; return 0; }
  t0=$(date +%s%N)
  # cancel jobs while slurmctld still runs, so that no job step outlives the cluster
  if running slurmctld "$(awk '$1 == "slurmctld" {print $2}' <<<"$list")"; then
    # a suspended job's processes stay stopped through scancel: resume them first
    for job in $(squeue -h -t S -o %i 2>/dev/null); do scontrol resume "$job" 2>/dev/null; done
    scancel --partition="$PARTITION" 2>/dev/null
    wait_for 20 bash -c '[ -z "$(squeue -h -t R,CG,PD,S 2>/dev/null)" ]' ||
      log "warning: jobs still listed after scancel: $(squeue -h 2>/dev/null | tr '\n' ';')"
  fi
  # TERM all at once (each daemon takes 1-3 s to exit), in reverse start order
  local pids=()
  while read -r name pid; do
    if running "$name" "$pid"; then
      kill -TERM "$pid" 2>/dev/null && pids+=("$pid")
    fi
  done < <(tac <<<"$list")
  for pid in "${pids[@]}"; do
    wait_for 20 bash -c "[ ! -e /proc/$pid ] || [ \"\$(awk '{print \$3}' /proc/$pid/stat 2>/dev/null)\" = Z ]" ||
      { log "PID $pid ignored TERM: KILL"; kill -KILL "$pid" 2>/dev/null; }
  done
  rm -f "$STATE/pids" "$STATE"/run/*.pid
  remove_own_conf
  log "down in $(ms_since "$t0") ms (stopped ${#pids[@]} daemons)"
}

cmd_status() {
  echo "recorded daemons:"
  live_pids | sed 's/^/  /'
  sinfo 2>&1 && squeue 2>&1
}

cmd_run() {
  [ $# -gt 0 ] || die "usage: $0 run CMD..."
  cmd_install || return 1
  cmd_up || return 1
  trap cmd_down EXIT
  trap 'exit 143' TERM
  trap 'exit 130' INT
  local rc=0
  "$@" || rc=$?
  return "$rc"
}

case "${1:-}" in
  install) cmd_install ;;
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  run) shift; cmd_run "$@" ;;
  *) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
