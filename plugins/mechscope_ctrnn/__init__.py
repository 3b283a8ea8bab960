"""First-party continuous-time RNN models (ctrnn, ei_ctrnn)."""
