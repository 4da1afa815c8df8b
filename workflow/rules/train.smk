# One job per run (agent x env x seed, plus ablation variants). Its output is a marker that
# snakemake touches after `trmrl train` exits 0. The run directory's checkpoint.pt and
# progress.csv are deliberately *not* outputs: snakemake deletes the outputs of a failed or
# interrupted job, and these must survive so that the rerun resumes from the checkpoint.
#
# Every rule's `conda:` is the project's environment.yml (for `--use-conda`); without that
# flag jobs run in the environment snakemake runs in.
RUN = f"{RESULTS}/runs/{{env}}/{{agent}}/seed{{seed}}{{rev}}"


rule train:
    output:
        touch(f"{RUN}/train.done"),
    log:
        f"{LOGS}/train/{{env}}/{{agent}}/seed{{seed}}{{rev}}.log",
    params:
        run_dir=lambda wildcards, output: os.path.dirname(output[0]),
        agent=lambda wildcards: run_of(wildcards).agent,
        steps=lambda wildcards: (
            f"--steps {run_of(wildcards).steps}" if run_of(wildcards).steps else ""
        ),
        overrides=lambda wildcards: run_of(wildcards).set_args(),
        device=job_device(),
    threads: job_resources("train", "cpus")
    resources:
        mem_mb=job_resources("train", "mem_mb"),
        runtime=job_resources("train", "runtime"),
        gpu=job_resources("train", "gpu"),
        cpus_per_task=job_resources("train", "cpus"),  # SLURM: the CPUs behind `threads`
        attempt=lambda wildcards, attempt: attempt,  # 1, then 2, ... on snakemake's --retries
    conda:
        "../../environment.yml"
    # workflow/scripts/run_job.py (JOB) runs the job: locally on a GPU slot and CPUs of its
    # own, with OMP_NUM_THREADS={threads}, its output in the log. Retries (--retries,
    # profiles/slurm) are for jobs that were killed: cancelled, preempted or timed out by
    # SLURM; the run resumes from its checkpoint. A real error (exit 1: the run diverged or
    # crashed, 2: bad input) is kept in <log>.failed, and the retries of this snakemake
    # invocation stop at once with that log instead of repeating it.
    shell:
        f"{JOB} --log {{log}} --attempt {{resources.attempt}} -- "
        "trmrl train --agent {params.agent} --env {wildcards.env} --seed {wildcards.seed} "
        "--out {params.run_dir} {params.steps} --device {params.device} {params.overrides}"


# seeds_per_job > 1: the seeds of one agent x env (x ablation variant) train in one job, one
# process (`trmrl train --seed S1 S2 ... --out .../seed{seed}`), for agents that support it.
# One rule per such job, named after its runs (train_<agent dir>_<env>_seeds_<S1>_<S2>...).
# Its outputs are the train.done markers of its seeds, which the rules downstream read as
# before; Snakemake prefers a rule without wildcards to `train` for a file both could make, so
# each run has exactly one job. A retry resumes every seed from its own checkpoint.
for population in POPULATION_JOBS:
    first = population.runs[0]

    rule:
        name:
            population.rule_name
        output:
            [touch(f"{run.path}/train.done") for run in population.runs],
        log:
            population.log,
        params:
            agent=first.agent,
            env=first.env,
            seeds=" ".join(map(str, population.seeds)),
            out=constant(shlex.quote(population.out)),
            steps=f"--steps {first.steps}" if first.steps else "",
            overrides=first.set_args(),
            device=job_device(),
        threads: population_resource(population, "cpus")
        resources:
            mem_mb=population_resource(population, "mem_mb"),
            runtime=population_resource(population, "runtime"),
            gpu=population_resource(population, "gpu"),
            cpus_per_task=population_resource(population, "cpus"),
            attempt=lambda wildcards, attempt: attempt,
            **train_profile_resources(),
        conda:
            "../../environment.yml"
        # as the train rule: run_job.py holds the job's GPU slot and CPUs; a real error (exit
        # 1: a seed diverged, the others trained to the end; 2: bad input) is not retried
        shell:
            f"{JOB} --log {{log}} --attempt {{resources.attempt}} -- "
            "trmrl train --agent {params.agent} --env {params.env} --seed {params.seeds} "
            "--out {params.out} {params.steps} --device {params.device} {params.overrides}"
