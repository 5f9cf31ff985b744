"""The aws target: images pushed as EBS snapshots + AMIs (:mod:`.ebs`, :mod:`.ami`), clients
made once in :mod:`.session`, the target object in :mod:`.target`."""
