"""Training recipes: one module per method, each read top to bottom as torchtune's recipes are.

    assets/recipes/sft.py     supervised fine-tuning (TRL's SFTTrainer)
    assets/recipes/dpo.py     preference training (TRL's DPOTrainer)
    assets/recipes/grpo.py    reinforcement learning with verifiable rewards (TRL's GRPOTrainer)

A recipe holds its method's whole training: the dataset as its trainer reads it, the train function,
saving the adapter and the merged model, the report it sends back, and its process entry point
(`python -m assets.recipes.<method>`, or torchrun for several processes). What every recipe shares
lives beside them: `job.py` (the job's settings and report, and the process side of Dagster Pipes:
ranks, the MLflow run, errors) and `launch.py` (the asset side: the setup's checkpoint folder and
resume, the MLflow run, launching the job through the `training_job` resource and reading its report).

The assets `fine_tuned_model` (SFT) and `preference_tuned_model` (DPO or GRPO) are glue: they pick
the examples, launch the recipe and describe what it trained. A recipe imports no asset module.
"""
