#!/bin/bash
# requeue.sh COMMAND ...: run COMMAND; on exit 75 (stopped after a checkpoint) requeue this job.
"$@" &
pid=$!
# With --signal=B:USR1@300 Slurm signals this shell 5 minutes before the limit; pass it on
# (srun forwards it to every task of a multi-node run).
trap 'kill -USR1 $pid' USR1 TERM
wait $pid; code=$?
while kill -0 $pid 2>/dev/null; do wait $pid; code=$?; done  # let it finish its checkpoint
[ $code -eq 75 ] && scontrol requeue "$SLURM_JOB_ID"
exit $code
