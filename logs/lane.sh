#!/usr/bin/env bash
# usage: lane.sh NAME -- brims args...   (runs from the frozen worktree, one thread)
name=$1; shift
cd /tmp/wt-lane
PYTHONPATH=/tmp/wt-lane/src OMP_NUM_THREADS=1 exec /work/main/.venv/bin/python -m brims_experiments.cli "$@" > /work/main/logs/$name.log 2>&1
