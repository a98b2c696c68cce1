"""The online RLHF loop: rounds of generate -> label -> reward model -> fine-tune -> evaluate."""
