from setuptools import find_packages, setup

# Where hfcoop is published: the one place that names it. The model card links it (from the installed metadata);
# the notebooks' install cell and the README quote it, and tests/test_repo.py checks that they agree with it.
URL = "https://github.com/hfcoop/hfcoop"

setup(
    name="hfcoop",
    version="0.1.0",
    url=URL,
    description="Cooperative alternatives to maximum likelihood (CoT, psi-MLE, GCN, GENERE) for Hugging Face causal LMs",
    long_description=open("README.md").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    # recipes/ ships inside the package as hfcoop/recipes/ (recipes, accelerate configs, bundled data slices), so an
    # installed wheel runs `hfcoop train cot --config coco/cot_tiny` from any folder (hfcoop/bundled.py finds it).
    packages=[*find_packages(include=["hfcoop", "hfcoop.*"]), "hfcoop.recipes"],
    package_dir={"hfcoop.recipes": "recipes"},
    package_data={"hfcoop.recipes": ["*.md", "*/*.yaml", "*/*.md", "data/*", "data/*/*"]},
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.4",
        "transformers>=5.0",
        "accelerate>=1.10",
        "datasets>=3.0",
        "peft>=0.17",
        "evaluate>=0.4.5",
        "trl>=1.0",
        "sacrebleu>=2.4",
        "rouge-score>=0.1.2",
        "pyyaml",
        "matplotlib",
    ],
    extras_require={
        # nltk: reference BLEU in tests; deepspeed: the ZeRO-2/3 tests (tests/test_sharded.py, CPU, needs g++);
        # bitsandbytes: the QLoRA tests run its 4-bit CPU kernels for real
        "dev": ["pytest>=8", "nbclient", "nbformat", "ipykernel", "tensorboard", "nltk", "deepspeed>=0.16",
                "bitsandbytes>=0.50", "hypothesis>=6"],
        "deepspeed": ["deepspeed>=0.16"],
        "quantization": ["bitsandbytes>=0.50"],  # QLoRA: model_init_kwargs.quantization_config (4/8-bit)
    },
    entry_points={"console_scripts": ["hfcoop=hfcoop.cli:main"]},
)
