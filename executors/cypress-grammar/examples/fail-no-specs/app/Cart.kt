class Cart {
    val items = mutableListOf<String>()
}
