# Evaluation protocols of `trmrl evaluate` on a trained run: fast adaptation on the test
# tasks (with the episodic memories for the latent map) and, on envs with an ood split,
# out-of-distribution tasks. Both are cheap next to training and are simply re-run.


rule evaluate_adaptation:
    input:
        f"{RUN}/train.done",
    output:
        table=f"{RUN}/eval/adaptation.csv",
        latents=f"{RUN}/eval/latents.npz",
    log:
        f"{LOGS}/evaluate/{{env}}/{{agent}}/seed{{seed}}{{rev}}.adaptation.log",
    params:
        run_dir=lambda wildcards, input: os.path.dirname(input[0]),
        device=job_device(),
    threads: job_resources("evaluate", "cpus")
    resources:
        mem_mb=job_resources("evaluate", "mem_mb"),
        runtime=job_resources("evaluate", "runtime"),
        gpu=job_resources("evaluate", "gpu"),
        cpus_per_task=job_resources("evaluate", "cpus"),
    conda:
        "../../environment.yml"
    shell:
        f"{JOB} --log {{log}} -- trmrl evaluate --run {{params.run_dir}} --protocol adaptation "
        "--out {output.table} --latents {output.latents} --device {params.device}"


rule evaluate_ood:
    input:
        f"{RUN}/train.done",
    output:
        f"{RUN}/eval/ood.csv",
    log:
        f"{LOGS}/evaluate/{{env}}/{{agent}}/seed{{seed}}{{rev}}.ood.log",
    params:
        run_dir=lambda wildcards, input: os.path.dirname(input[0]),
        device=job_device(),
    threads: job_resources("evaluate", "cpus")
    resources:
        mem_mb=job_resources("evaluate", "mem_mb"),
        runtime=job_resources("evaluate", "runtime"),
        gpu=job_resources("evaluate", "gpu"),
        cpus_per_task=job_resources("evaluate", "cpus"),
    conda:
        "../../environment.yml"
    shell:
        f"{JOB} --log {{log}} -- trmrl evaluate --run {{params.run_dir}} --protocol ood "
        "--out {output} --device {params.device}"
