from glob import glob

from setuptools import find_packages, setup

PACKAGE = "mvvdp_ros"

setup(
    name=PACKAGE,
    version="0.1.0",
    description="Multi-view video diffusion policy (MV-VDP) for a Franka arm on ROS 2",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["mvvdp_core", "mvvdp_core.*", "mvvdp_ros", "mvvdp_ros.*"]),
    package_data={
        "mvvdp_core": ["sim/assets/*", "checkpoints/*/*.*", "checkpoints/*/*/*.*", "checkpoints/*/*/*/*.*"]
    },
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.py")),
        (f"share/{PACKAGE}/config", glob("config/*.*")),
        (f"share/{PACKAGE}/cuda", glob("cuda/*.*")),
    ],
    install_requires=[
        "numpy>=1.26",
        "torch>=2.5",
        "pyyaml>=6",
        "tqdm>=4.66",
        "matplotlib>=3.8",
        "pillow>=10",
        "safetensors>=0.4",
        "diffusers==0.42.1",
        "peft==0.21.2",
        "transformers>=4.50",
        "accelerate>=1.0",
        "ninja>=1.11",
        "scipy>=1.11",
        "tyro>=1.0",
    ],
    extras_require={
        "sim": ["mujoco==3.3.0", "metaworld==3.1.1", "packaging"],
        "train": ["tensorboard>=2.16"],
        # Recording to MCAP with ROS 2 schemas and reading it back (mvvdp_core.data.mcap_episodes).
        "mcap": ["mcap>=1.1", "mcap-ros2-support>=0.5"],
        # Cloud clean-up in perception and `mvvdp check-calibration` (ICP); the CPU build of Open3D (the
        # `open3d` package, with CUDA, serves as well). Needs libusb-1.0 from the system.
        "cloud": ["open3d-cpu>=0.19"],
        # The ROS packages mvvdp_ros imports that exist as wheels (as package.xml; tf2_msgs, tf2_ros_py,
        # launch, launch_ros and franka_msgs come with a robot's ROS install).
        "ros": [
            "ros-kilted-rclpy",
            "ros-kilted-builtin-interfaces",
            "ros-kilted-rcl-interfaces",
            "ros-kilted-ament-index-python",
            "ros-kilted-std-msgs",
            "ros-kilted-std-srvs",
            "ros-kilted-sensor-msgs",
            "ros-kilted-geometry-msgs",
            "ros-kilted-visualization-msgs",
            "ros-kilted-diagnostic-msgs",
            "ros-kilted-lifecycle-msgs",
            "ros-kilted-rmw-fastrtps-cpp",
        ],
        "msgs-build": [
            "ros-kilted-ament-package",
            "ros-kilted-ament-cmake",
            "ros-kilted-ament-cmake-include-directories",
            "ros-kilted-ament-cmake-ros-core",
            "ros-kilted-rosidl-core-generators",
            "ros-kilted-rosidl-default-generators",
            "catkin-pkg",
        ],
        "dev": ["pytest>=8", "pytest-timeout>=2.3", "hypothesis>=6.100", "ruff>=0.6"],
    },
    entry_points={
        "console_scripts": [
            "mvvdp = mvvdp_core.cli:main",
            "perception_node = mvvdp_ros.perception_node:main",
            "policy_node = mvvdp_ros.policy_node:main",
            "executor_node = mvvdp_ros.executor_node:main",
            "sim_robot_node = mvvdp_ros.sim_robot_node:main",
            "recorder_node = mvvdp_ros.recorder_node:main",
        ]
    },
)
