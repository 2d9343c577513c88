data class Student(val name: String, val grade: Int)

fun best(students: List<Student>): Student? = students.maxByOrNull { it.grade }

fun main() {
    val students = listOf(Student("Ada", 6), Student("Alan", 5))
    println("Best: ${best(students)?.name ?: "nobody"}")
}
