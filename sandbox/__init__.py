"""Where actions meet the world: tasks with verifiable answers, the code jail, games. A leaf package."""
