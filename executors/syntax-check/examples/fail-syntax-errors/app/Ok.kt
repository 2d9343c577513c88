fun ok(): Boolean = true
