"""What runs when: jobs, the nightly schedule, partitions, pools, code versions."""
