"""teacher_service package."""
