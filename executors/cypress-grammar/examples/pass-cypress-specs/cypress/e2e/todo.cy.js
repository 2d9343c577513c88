describe('todo list', () => {
  beforeEach(() => {
    cy.visit('/');
  });

  it('adds an item', () => {
    cy.get('#todo-text').type('buy milk{enter}');
    cy.get('#todo-list li').should('have.length', 1).and('contain', 'buy milk');
    cy.get('#counter').should('have.text', '1 item left');
  });

  it('strikes a done item', () => {
    cy.addTodo('write the lab report');
    cy.get('#todo-list li input[type=checkbox]').first().check();
    cy.get('#todo-list li').first().should('have.class', 'done');
  });
});
