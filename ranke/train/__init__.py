"""Stage `round`: one RankE training round (GRPO policy step + rank-weighted decoder co-evolution).

rollout.py       rollouts, rewards and per-step data
policy.py        GRPO advantages, PPO-clip + KL loss, EMA
decoder.py       rank weights, tau schedule, decoder loss terms
discriminator.py PatchGAN + hinge losses
round.py         run_round: the training loop, checkpoints, resume, DDP
launch.py        `python -m ranke round`: submitit submission (local | debug | slurm)
"""
