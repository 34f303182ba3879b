#!/bin/bash
set -e
j0=$(sbatch --parsable /work/wt17/runs/fort2020_small/slurm/train.sbatch)
j1=$(sbatch --parsable --dependency=afterany:${j0%%;*} /work/wt17/runs/fort2020_small/slurm/spawn.sbatch)
sbatch --dependency=afterany:${j1%%;*} /work/wt17/runs/fort2020_small/slurm/report.sbatch
