"""`taylorcli paper NAME`: a whole paper from its manifest (taylorcli/paper/data/NAME.yaml) — planned,
run here one run after another, or written as a SLURM job array with a report job after it.

manifest.py reads the manifest, plan.py resolves its runs and their costs, folder.py guards the
output folder, local.py runs the plan here, slurm.py writes the job scripts, status.py reads
what is done, report.py writes the report the manifest asks for; data/ holds the manifests
and the papers' reference tables. Only cli.py imports this.
"""
