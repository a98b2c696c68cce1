"""Tests of t2i_rlhf/training/finetune/."""
