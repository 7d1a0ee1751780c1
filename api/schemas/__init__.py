"""Request and response bodies, one naming family per resource: `XCreate` in, `XPublic` out, `XsPublic` lists."""
