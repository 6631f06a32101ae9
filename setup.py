"""fastrobust: robust fine-tuning of multilingual encoders with fused Triton kernels."""

import pathlib

from setuptools import find_packages, setup

HERE = pathlib.Path(__file__).parent
README = (HERE / "README.md").read_text(encoding="utf-8") if (HERE / "README.md").exists() else ""

setup(
    name="fastrobust",
    version="0.1.0",
    description="Fast robust fine-tuning (adversarial training, smoothing) of multilingual encoders",
    long_description=README,
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    # kernels/ lives at the top of the repository but installs as fastrobust.kernels,
    # so no generic top-level module named `kernels` lands in users' environments.
    # The recipes in configs/ install as fastrobust.configs so that `fastrobust train` finds
    # the demo config from any working directory.
    packages=[
        *find_packages(include=["fastrobust", "fastrobust.*"]),
        "fastrobust.kernels",
        "fastrobust.configs",
    ],
    package_dir={"fastrobust.kernels": "kernels", "fastrobust.configs": "configs"},
    package_data={"fastrobust.configs": ["*.yaml", "ds/*.json"]},
    include_package_data=True,
    install_requires=[
        "torch>=2.4",
        "transformers>=4.46",
        "datasets>=3.0",
        "numpy>=1.24",
        "pyyaml>=6.0",
        "tqdm>=4.66",
        "safetensors>=0.4",
        "pydantic>=2.6",
        "tokenizers>=0.20",
        "scipy>=1.10",
        "matplotlib>=3.7",
        "tensorboard>=2.14",
    ],
    extras_require={
        "triton": ["triton>=3.0; platform_system == 'Linux'"],
        "deepspeed": ["deepspeed>=0.15"],
        # fastrobust.integrations.hf (transformers.Trainer needs accelerate)
        "hf": ["accelerate>=1.1"],
        # LoRA adapters: model.lora in fastrobust train, PeftModel in RobustTrainer
        "peft": ["peft>=0.13"],
        "dev": [
            "accelerate>=1.1",
            "pytest>=8",
            "pytest-benchmark>=4",
            "pytest-timeout>=2.3",
            "ruff>=0.6",
        ],
    },
    entry_points={"console_scripts": ["fastrobust=fastrobust.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
