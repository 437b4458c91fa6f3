"""mvvdp core: geometry, model, policy, data and training for MV-VDP. Never imports rclpy."""

__version__ = "0.1.0"
