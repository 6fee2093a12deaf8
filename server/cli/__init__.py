"""What runs in the user's terminal: the `orthofed` commands (commands), launching Flower
for a run and stopping it (launcher, the only module that starts Flower), the live
progress view and final tables (progress), and the report's plots (report)."""
