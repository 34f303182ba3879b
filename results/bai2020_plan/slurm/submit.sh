#!/bin/bash
set -e
j0=$(sbatch --parsable /work/wt17/runs/bai2020/slurm/train.sbatch)
sbatch --dependency=afterany:${j0%%;*} /work/wt17/runs/bai2020/slurm/report.sbatch
