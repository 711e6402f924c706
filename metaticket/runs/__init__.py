"""Run machinery: each run.py command as a function (commands), objects from configs (factory), the
training loop, checkpoints, run folders, monitoring, tickets, sweeps and plots."""
