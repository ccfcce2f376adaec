"""Raw datasets in nnU-Net v2's layout: reading dataset.json, listing cases, verifying, converting."""
