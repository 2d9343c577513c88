fun average(grades: List<Int>): Double {
    if (grades.isEmpty()) return 0.0
    return grades.sum().toDouble() / grades.size
}

fun label(grade: Int): String = when (grade) {
    in 5..6 -> "good"
    in 3..4 -> "fair"
    else -> "poor"
