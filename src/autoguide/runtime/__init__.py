"""Where and how this process runs: rank and device, model loading, one writer per folder
(claims), stopping on a cluster signal."""
