#!/usr/bin/env bash
# deploy/slurm/mesa.sbatch on a real one-node Slurm cluster brought up inside the test:
# munged with its own key and socket, slurmctld and slurmd in the foreground with a
# slurm.conf of the test's own (free ports, state in a temporary directory, no cgroups),
# then `sbatch --wait mesa.sbatch` on a small batch, whose records must equal `mesa
# run`'s; a second submission with the same store finds the finished job (nothing is
# recomputed). Everything started is killed at the end.
#   slurm_test.sh MESA_BINARY SHARED_DIR
# Skips (exit 77) when not root, without slurmctld/slurmd/sbatch or munged, without mpirun
# (srun's PMIx starts the ranks, but OpenMPI's libraries must be there), or when mesa was
# built without MPI.
set -uo pipefail
MESA="$(realpath "$1")"
SHARED="$2"
HERE="$(cd "$(dirname "$0")" && pwd)"
SBATCH_SCRIPT="$HERE/../../deploy/slurm/mesa.sbatch"
MODEL="$SHARED/models/stories260K-f32.gguf"
[ -f "$MODEL" ] || { echo "SKIP: $MODEL not found"; exit 77; }
[ "$(id -u)" = 0 ] || { echo "SKIP: not root (the test runs slurmctld/slurmd as root)"; exit 77; }
for b in slurmctld slurmd sbatch sinfo srun munged; do
  command -v "$b" >/dev/null 2>&1 || PATH="$PATH:/usr/sbin"
  command -v "$b" >/dev/null 2>&1 || { echo "SKIP: $b not found (Debian: slurm-wlm, munge)"; exit 77; }
done
command -v mpirun >/dev/null 2>&1 || { echo "SKIP: OpenMPI not installed (openmpi-bin)"; exit 77; }

# TMP, PIDS (killed on exit), fail, die, show, wait_for.
source "$HERE/lib.sh"
chmod 700 "$TMP"
cleanup() {
  kill_started --term-first  # the daemons (slurmd ends its job steps' tasks)
  kill_stray_ranks "$TMP"/work/*.log  # ranks that outlived slurmd
  rm -rf "$TMP"
}

# Built with MPI? (without it `mesa cluster` exits 2 at once saying so)
echo '{"custom_id": "probe", "document": "A cat sat."}' >"$TMP/probe.jsonl"
"$MESA" cluster --model "$MODEL" --input "$TMP/probe.jsonl" --output "$TMP/probe.out" --max-tokens 2 --threads 1 \
  >"$TMP/probe.log" 2>&1
if grep -q "built without MPI" "$TMP/probe.log"; then echo "SKIP: mesa was built without MPI"; exit 77; fi

# --- munge: a key of this test's own and its own socket.
mkdir -p "$TMP/munge" "$TMP/state" "$TMP/spool" "$TMP/work"
chmod 700 "$TMP/munge"
dd if=/dev/urandom of="$TMP/munge/munge.key" bs=1024 count=1 status=none
chmod 600 "$TMP/munge/munge.key"
SOCK="$TMP/munge/munge.socket"
munged --foreground --force --socket="$SOCK" --key-file="$TMP/munge/munge.key" \
  --pid-file="$TMP/munge/munged.pid" --log-file="$TMP/munge/munged.log" --seed-file="$TMP/munge/munged.seed" \
  >"$TMP/munged.out" 2>&1 &
PIDS+=($!)
wait_for 10 test -S "$SOCK" || { echo "SKIP: munged did not start: $(cat "$TMP/munged.out" "$TMP/munge/munged.log" 2>/dev/null | tail -3)"; exit 77; }

# --- slurm.conf: this machine as the one node, with free ports.
read -r CTLD_PORT SLURMD_PORT < <(python3 -c "
import socket
ss = [socket.socket() for _ in range(2)]
for s in ss: s.bind(('127.0.0.1', 0))
print(*[s.getsockname()[1] for s in ss])")
HOST=$(hostname -s)
CPUS=$(nproc)
export SLURM_CONF="$TMP/slurm.conf"
cat >"$SLURM_CONF" <<EOF
ClusterName=mesatest
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$SOCK
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
SchedulerType=sched/backfill
ReturnToService=2
StateSaveLocation=$TMP/state
SlurmdSpoolDir=$TMP/spool/%n
SlurmctldPidFile=$TMP/slurmctld.pid
SlurmdPidFile=$TMP/slurmd.pid
SlurmctldLogFile=$TMP/slurmctld.log
SlurmdLogFile=$TMP/slurmd.log
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MailProg=/bin/true
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS State=UNKNOWN
PartitionName=mesa Nodes=$HOST Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
slurmctld -D -i >"$TMP/slurmctld.out" 2>&1 &
PIDS+=($!)
slurmd -D >"$TMP/slurmd.out" 2>&1 &
PIDS+=($!)
idle() { sinfo -h -n "$HOST" -o %t 2>/dev/null | grep -q '^idle'; }
if ! wait_for 60 idle; then
  echo "FAIL: the Slurm node did not become idle: $(sinfo 2>&1 | tail -2)"
  show "$TMP/slurmctld.log" 15; show "$TMP/slurmd.log" 15; show "$TMP/slurmctld.out" 5; show "$TMP/slurmd.out" 5
  exit 1
fi
echo "slurm $(sinfo -V | awk '{print $2}'): node $HOST ($CPUS CPUs) idle, ports $CTLD_PORT/$SLURMD_PORT"

# --- the batch: the sample documents and a line that is not JSON.
python3 "$HERE/../../scripts/make_sample_jobs.py" --shared "$SHARED" --out "$TMP/work/in.jsonl" >/dev/null 2>&1 \
  || { echo "FAIL: make_sample_jobs.py"; exit 1; }
echo 'not json' >>"$TMP/work/in.jsonl"
"$MESA" run --model "$MODEL" --input "$TMP/work/in.jsonl" --output "$TMP/work/ref.jsonl" --max-tokens 12 --threads 2 \
  >"$TMP/work/reference.log" 2>&1 || { die "mesa run failed"; show "$TMP/work/reference.log"; }

# OpenMPI's ranks under srun: loopback only.
export OMPI_MCA_btl=self,tcp OMPI_MCA_btl_tcp_if_include=lo OMPI_MCA_oob_tcp_if_include=lo MESA="$MESA"
submit() {  # submit LOG: sbatch --wait of mesa.sbatch; 3 tasks on the node's CPUs (overcommitted)
  (cd "$TMP/work" && timeout 300 sbatch --wait --ntasks=3 --cpus-per-task=1 --overcommit --output="$1" \
    "$SBATCH_SCRIPT" --model "$MODEL" --input in.jsonl --output out.jsonl --store "$TMP/work/store" \
    --max-tokens 12 --threads 1 --listen 127.0.0.1:0 --heartbeat-timeout 2) >"$TMP/sbatch.out" 2>&1
}
submit "$TMP/work/job1.log"; rc=$?
[ "$rc" = 0 ] || { die "sbatch --wait exited $rc: $(cat "$TMP/sbatch.out")"; show "$TMP/work/job1.log" 40; }
python3 - "$TMP/work/ref.jsonl" "$TMP/work/out.jsonl" <<'PY' || die "the Slurm job's records differ from mesa run's"
import json, sys
def load(p):
    out = []
    for l in open(p):
        if l.strip():
            r = json.loads(l); r.pop("timings", None); r.pop("created", None)
            out.append(json.dumps(r, sort_keys=True))
    return out
a, b = load(sys.argv[1]), load(sys.argv[2])
assert a == b, f"{len(a)} vs {len(b)} records, or different"
print(f"{len(b)} records equal to mesa run's, in input order")
PY
grep "^mesa cluster: rank" "$TMP/work/job1.log" | sed 's/^/  /'
n=$(grep -c " worker.joined " "$TMP/work/job1.log")
[ "$n" = 3 ] || die "$n workers joined, not 3 (one per task)"
grep -q "local rank 2 (" "$TMP/work/job1.log" || die "no task logged local rank 2"

# Resubmission with the same store: the job is found there, nothing recomputed.
cp "$TMP/work/out.jsonl" "$TMP/work/out1.jsonl"
submit "$TMP/work/job2.log"; rc=$?
[ "$rc" = 0 ] || { die "the second sbatch exited $rc"; show "$TMP/work/job2.log" 40; }
n=$(wc -l <"$TMP/work/ref.jsonl")
grep -q ", $n already done in the store (not recomputed)" "$TMP/work/job2.log" \
  || { die "the resubmission did not find the finished job"; show "$TMP/work/job2.log" 20; }
cmp -s "$TMP/work/out.jsonl" "$TMP/work/out1.jsonl" || die "the resubmission's output differs (recomputed?)"
echo "resubmitted: the job came back from the store, byte for byte"
if [ "$fail" = 0 ]; then echo "PASS: slurm"; fi
exit "$fail"
