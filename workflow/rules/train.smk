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
        device=config["device"],
    threads: job_resources("train", "cpus")
    resources:
        mem_mb=job_resources("train", "mem_mb"),
        runtime=job_resources("train", "runtime"),
        gpu=job_resources("train", "gpu"),
    conda:
        "../../environment.yml"
    # OMP_NUM_THREADS sizes torch's thread pool: by default it takes every core, which
    # slows jobs that share a machine ~5x
    shell:
        "OMP_NUM_THREADS={threads} trmrl train --agent {params.agent} --env {wildcards.env} "
        "--seed {wildcards.seed} --out {params.run_dir} {params.steps} --device {params.device} "
        "{params.overrides} > {log} 2>&1 "
        "|| {{ status=$?; [ $status -ne 2 ] || echo 'hint: a run directory keeps its "
        "hyperparameters; to retrain with new ones, bump train_revision in the config' >> {log}; "
        "exit $status; }}"
