"""The models, and the only package of the runner that imports torch, diffusers, transformers or accelerate:
device choice (`device`), what to render (`specs`, torch-free, so the stages plan with it), SDXL loading and
rendering (`sdxl`), prompt encoding in 77-token windows (`prompts`), SVD (`svd`), the tiny offline models
(`tiny`), CLIP's tokenizer files and the SDXL config folder (`clip`), single-file export (`single_file`), and the
host that keeps loaded pipelines (`host`). Nothing here is imported at package import: importing
`gpu_runner.pipelines.specs` loads no model library."""
