"""CG molecular dynamics with a trained potential: integrator, reporters, driver."""
