"""Tests of t2i_rlhf/training/reward/."""
