"""student_trainer package."""
