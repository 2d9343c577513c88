describe('shopping cart', () => {
  it('adds a book to the cart', () => {
    cy.visit('/shop');
    cy.contains('.book', 'Compilers').find('button.add').click();
    cy.get('#cart-count').should('have.text', '1');

  it('empties the cart', () => {
    cy.get('#cart-empty').click();
    cy.get('#cart-count').should('have.text', '0');
  });
});
