"""Tests of t2i_rlhf/online/."""
