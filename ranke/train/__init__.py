"""Stage `round`: one RankE training round (GRPO policy step + rank-weighted decoder co-evolution).

rollout.py       rollouts, rewards and per-step data
policy.py        GRPO advantages, PPO-clip + KL loss, EMA
decoder.py       rank weights, tau schedule, decoder loss terms
discriminator.py PatchGAN + hinge losses
round.py         run_round: the training loop, checkpoints, resume, DDP
launch.py        `python -m ranke round`: submitit submission (local | debug | slurm)
"""

# A round's work directory (results/<study>/<method>/seed_<s>/round_<r>/work/): named here, free of
# torch, because the round's driver (launch.py) reads them without importing the training code.
RESUME_FILE = "resume.pt"
RESUME_INFO = "resume.json"  # the step of resume.pt, readable without torch
# The training log so far, rewritten at every checkpoint: a round runs for hours on a cluster, and
# the round's train_log.parquet (an output) appears only when it ends.
LIVE_LOG = "train_log.parquet"
