"""Results back where the clinic looks: a DICOM Structured Report of the findings and a Secondary Capture of the
image with its heatmap, sent by C-STORE to the configured destinations (the modality, a PACS) from a persistent
queue that retries."""
