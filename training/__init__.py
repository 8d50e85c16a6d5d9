"""How models change (`strop.training`): dataset builders, trainer kinds over TRL, the registry, promotion,
recipes (roles, stages), the evolve cycle, schedules."""
