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
