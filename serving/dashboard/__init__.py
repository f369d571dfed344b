"""Live inspection dashboard: latest image per camera, boxes, labels, pass/fail, over SSE."""

from serving.dashboard.app import DashboardState, create_app, sanitize_result

__all__ = ["DashboardState", "create_app", "sanitize_result"]
